package dfu

import (
	"context"
	"testing"
)

// oneByte answers GETSTATE with a fixed state, and records the request.
type oneByte struct {
	rType, req uint8
	idx        uint16
	answer     []byte
}

func (o *oneByte) Control(_ context.Context, rType, request uint8, _, idx uint16, data []byte) (int, error) {
	o.rType, o.req, o.idx = rType, request, idx
	return copy(data, o.answer), nil
}

func TestGetState(t *testing.T) {
	c := &oneByte{answer: []byte{byte(DfuIdle)}}
	p := proto{c: c, iface: 3, clock: WallClock{}}
	st, err := p.getState(context.Background())
	if err != nil || st != DfuIdle {
		t.Fatalf("getState = %v, %v", st, err)
	}
	if c.rType != TypeIn || c.req != ReqGetState || c.idx != 3 {
		t.Errorf("request %#x/%d on interface %d", c.rType, c.req, c.idx)
	}
	c.answer = nil
	if _, err := p.getState(context.Background()); err == nil {
		t.Error("a short GETSTATE answer was accepted")
	}
}
