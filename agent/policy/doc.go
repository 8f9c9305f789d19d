// Package policy is the agent's request policy: every AgentService request
// is checked against a Rego policy, compatible with the policies Kata's
// genpolicy generates, before it runs.
//
// The engine is OPA's Go rego package. A policy is compiled once; each
// request is evaluated at data.agent_policy.<RequestMessageName> (EntryPoint)
// with the request as input, shaped as kata-agent shapes it (Input). A rule
// yields a boolean, or {allowed, ops} whose JSON-patch ops update the policy
// state at data.pstate (CreateContainer records the container, Remove
// forgets it). No rule and no default is a denial. Builtins that reach
// outside the guest (http.send, net.lookup_ip_addr, opa.runtime, JSON schema
// with remote refs) do not exist for policies.
//
// Engine implements the agent's Gate. A denial is a *DeniedError (gRPC
// PERMISSION_DENIED, "<Request> is blocked by policy: <reason>", the reason
// being the last print output of the evaluation); for ReadStdout/ReadStderr
// it also matches ErrDenyDrain, and the agent drains the output and returns
// empty data instead of failing. Inputs and print output are logged only at
// debug level, with env values redacted.
//
// Two policies ship with the agent: AllowAllPolicy for development and
// CocoDefaultPolicy for confidential guests whose initdata has no policy.
package policy
