// Package grpc holds the wire types and ttrpc glue of the agent API that the
// Kata shim speaks: service grpc.AgentService (agent.proto, with the OCI spec
// in oci.proto and volume stats in csi.proto) and service grpc.Health
// (health.proto).
//
// The .proto files are Cova's own, written to be wire-identical to the Kata
// Containers agent API: same proto package, message, field and rpc names and
// the same field numbers and types. wire_test.go checks this against a fact
// table dumped from Kata's protos (../testdata/kata-wire.txt).
//
// The *.pb.go files are generated; edit the .proto files and run
// hack/protos.sh. The package name matches the proto package, not
// google.golang.org/grpc, which Cova does not use for this API.
package grpc
