// Package cdh holds the wire types and ttrpc glue of the Confidential Data
// Hub API (proto package api: services SealedSecretService,
// GetResourceService, SecureMountService and ImagePullService) that Kata's
// agent, image-rs and CoCo's api-server-rest call on
// unix:///run/confidential-containers/cdh.sock. The key provider service
// served on the same socket is in protocols/keyprovider; the
// implementation is cdh/api.
//
// api.proto is Cova's own, written to be wire-identical to
// guest-components' confidential-data-hub api.proto: same proto package,
// message, field and rpc names, field numbers and types. wire_test.go checks
// this against a fact table dumped from the upstream file
// (testdata/cdh-wire.txt).
//
// The *.pb.go files are generated; edit the .proto file and run
// hack/protos.sh.
package cdh
