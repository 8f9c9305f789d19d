// Package keyprovider holds the wire types and ttrpc glue of the ocicrypt
// key provider API (proto package keyprovider, service KeyProviderService:
// WrapKey, UnWrapKey) that image decryption clients call; the Confidential
// Data Hub serves UnWrapKey on its socket (cdh/api). Each message carries a
// JSON document in its single bytes field.
//
// keyprovider.proto is Cova's own, written to be wire-identical to
// guest-components' keyprovider.proto (the same as containers/ocicrypt's):
// wire_test.go checks it against a fact table dumped from the upstream file
// (testdata/keyprovider-wire.txt).
//
// The *.pb.go files are generated; edit the .proto file and run
// hack/protos.sh.
package keyprovider
