// Package types holds the network types of the agent API (proto package
// "types"): Interface, IPAddress, Route and ARPNeighbor, plus the IPFamily and
// FSGroupChangePolicy enums. They are wire-identical to Kata's types.proto.
//
// types.pb.go is generated; edit types.proto and run hack/protos.sh.
package types
