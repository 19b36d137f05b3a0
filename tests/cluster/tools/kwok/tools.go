//go:build tools

// A blank import pins the command `make install-cluster` builds from this module.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
