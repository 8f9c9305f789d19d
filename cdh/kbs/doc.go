// Package kbs is the guest side of the CoCo Key Broker Service protocol,
// version 0.4.0 exactly (trustee v0.14 and later; guest-components'
// kbs_protocol): Request-Challenge-Attestation-Response (RCAR) to obtain an
// attestation token, and JWE-encrypted resources released to the TEE key the
// token certifies.
//
// One Client holds one TEE key pair (EC P-256 by default, P-521 or RSA-2048
// OAEP-256) for its lifetime and binds it into the evidence: the report data
// is the hash (sha384, or the algorithm the challenge selects) of the RFC 8785
// canonical runtime data {"additional-evidence","nonce","tee-pubkey"}.
// The token is reused until it expires — judged by the lifetime the KBS
// granted (exp − iat) measured on the guest's monotonic clock, so a skewed
// guest wall clock neither keeps a stale token nor re-attests in a loop —
// and a 401 from the KBS forces a new RCAR. Transient failures are retried a
// bounded number of times with exponential back-off and jitter; every error
// names the KBS, the step (auth, evidence, attest, resource) and the HTTP
// status, and wraps an errdefs class.
//
// IBM Secure Execution (primary TEE "se") differs in the challenge: the
// KBS's SE verifier puts an attestation request (se.Request JSON) in the
// nonce, and extra-params selects the hash (sha512 from trustee v0.21; ""
// and so sha384 before). The client hashes the runtime data as for every TEE
// (the nonce verbatim), adds the digest to the request as
// runtime_data_digest (se.InjectRuntimeDigest) and hands the request to the
// se attester, which makes the Ultravisor call with the digest as user data.
// Device attesters are not supported with SE.
//
// Resources are fetched with the session cookie and the token as a bearer
// credential, so the same Client works in background-check mode (one KBS)
// and in passport mode (Config.ResourceURL names a second KBS that trusts the
// first one's tokens). Client.Token serves the Attestation Agent's GetToken
// ({"token","tee_keypair"}).
//
// Nothing secret is logged: not the token, not the key, not resource bytes.
package kbs
