package blockdev

// faultBeforeVerify, when set, runs between the write and the read-back of
// every Write without its own hook. Only a kiln built with -tags kilnfault
// sets it (fault_kilnfault.go), so that tests can corrupt the "card"
// through the real binary; release builds have no way to set it.
var faultBeforeVerify func(dev string) error
