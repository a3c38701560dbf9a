package blockdev

// faultBeforeVerify, when set, runs before every read-back (HashDisk), so
// between the write and its proof. Only a kiln built with -tags kilnfault
// sets it (fault_kilnfault.go), so that tests can corrupt the "card"
// through the real binary; release builds have no way to set it.
var faultBeforeVerify func(dev string) error
