// Package cdh is Cova's Confidential Data Hub: it turns attestation into
// usable secrets inside the guest. Its subpackages are the KBS client
// (cdh/kbs: RCAR attestation, tokens and JWE-encrypted resources, protocol
// 0.4.0) and the RFC 8785 canonical JSON the protocol hashes
// (cdh/canonjson); sealed secrets, KMS plugins, the keyprovider and secure
// mounts build on them.
package cdh
