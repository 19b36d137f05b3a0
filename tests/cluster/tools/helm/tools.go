//go:build tools

// A blank import pins the command `make install-cluster` builds from this module.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
