// Third-party CRDs, read at test time from the published modules of their projects (never committed):
// tests/cluster/thirdparty.py names the files. Nothing imports these modules, so never `go mod tidy` here.
module chatmodel.dev/cluster-tools/crds

go 1.26

require (
	github.com/kedacore/keda/v2 v2.21.0
	github.com/kubeflow/trainer/v2 v2.3.0
	github.com/prometheus-operator/prometheus-operator v0.85.0
	sigs.k8s.io/gateway-api v1.6.3
	sigs.k8s.io/gateway-api-inference-extension v1.6.0
	sigs.k8s.io/kueue v0.17.1
)
