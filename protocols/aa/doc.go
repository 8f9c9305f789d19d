// Package aa holds the wire types and ttrpc glue of the Attestation Agent API
// (proto package attestation_agent, service AttestationAgentService) that
// CoCo's guest components call to get evidence and tokens and to record
// runtime measurements.
//
// attestation_agent.proto is Cova's own, written to be wire-identical to
// guest-components' attestation-agent.proto: same proto package, message,
// field, enum and rpc names, field numbers and types. wire_test.go checks
// this against a fact table dumped from the upstream file
// (testdata/aa-wire.txt).
//
// The *.pb.go files are generated; edit the .proto file and run
// hack/protos.sh.
package aa
