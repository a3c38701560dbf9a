// Package ab is the A/B update of a running device as a state machine over
// a small typed interface, Device: inspect, lock, write a slot and prove it,
// arm a one-shot trial boot of the new slot, reboot, check its health,
// commit — or roll back. It knows nothing of SSH or shells: flash/ssh
// implements Device with the stock tools of the device (or kiln's helper),
// and abtest implements it in process, with tryboot semantics, power cuts
// at any step and lost answers, so every path of the machine is tested in
// plain `go test` without root.
//
// How the device picks its slot at boot is the Device's business (the
// Raspberry Pi firmware's autoboot.txt [tryboot], or a boot loader's
// environment with a boot counter): the machine only asks it to arm a trial,
// to reboot into it, and to commit.
//
// The rules the machine keeps:
//   - nothing is written while another update holds the device's lock, or
//     while a young trial boot may still be reconnecting to its updater;
//   - a slot is armed only after the device's own hash of it equals the
//     image's;
//   - power lost before the commit boots the old slot; the commit is the
//     one step that moves the default, and a commit whose answer is lost is
//     settled by reconnecting (committed, still in the trial: commit again,
//     restarted on the old slot: ErrRolledBack, unreachable: ErrCommitUnknown);
//   - a trial that fails its health check, or comes up on the wrong slot,
//     is rebooted back to the committed slot even when kiln is being stopped.
package ab
