package sshdev

import "testing"

// The helper's delta report comes from the device: whatever it says, the
// parser neither panics nor asks for a block twice or out of range.
func FuzzDeltaOutput(f *testing.F) {
	f.Add([]byte("d 1\np 4096\nd 3\n= 2 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n"))
	f.Add([]byte("d 9\nd 2\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		const n = 8
		want := make(chan int64, n)
		o := &deltaOutput{nblocks: n, want: want, next: -1}
		o.Write(b)
		o.stop()
		last := int64(-1)
		for i := range want {
			if i <= last || i >= n {
				t.Fatalf("asked for block %d after %d", i, last)
			}
			last = i
		}
	})
}
