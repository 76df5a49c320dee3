package main

import (
	"context"
	"os"
	"os/signal"
	"sync"
	"time"
)

// lazySignalContext is a context cancelled by one of its signals, which
// subscribes to them only when something first asks for Done: the channel
// fetch, the report, a vsock notify. A load that reads firmware and
// writes the credstore never waits on it, and os/signal's set-up (a
// goroutine and the OS thread it needs) was 0.4 ms of a 5 ms boot service.
// Until then a signal has its default effect, ending the process, which is
// what a cancelled context would lead to anyway: the credstore is written
// so that a file is whole, old or new, whenever the process dies.
type lazySignalContext struct {
	sigs []os.Signal
	once sync.Once
	mu   sync.Mutex
	ctx  context.Context // set by subscribe
	stop context.CancelFunc
}

// newLazySignalContext returns a context cancelled on the first of sigs
// received after something first calls its Done, and a function that
// unsubscribes.
func newLazySignalContext(sigs ...os.Signal) (context.Context, func()) {
	l := &lazySignalContext{sigs: sigs}
	return l, l.release
}

func (l *lazySignalContext) subscribe() context.Context {
	l.once.Do(func() {
		ctx, stop := signal.NotifyContext(context.Background(), l.sigs...)
		l.mu.Lock()
		l.ctx, l.stop = ctx, stop
		l.mu.Unlock()
	})
	return l.ctx
}

// subscribed returns the signal context, or nil before the first Done.
func (l *lazySignalContext) subscribed() context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ctx
}

func (l *lazySignalContext) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stop != nil {
		l.stop()
	}
}

// Deadline reports no deadline.
func (l *lazySignalContext) Deadline() (time.Time, bool) { return time.Time{}, false }

// Done subscribes to the signals on its first call.
func (l *lazySignalContext) Done() <-chan struct{} { return l.subscribe().Done() }

// Err is nil until a signal arrives after the subscription.
func (l *lazySignalContext) Err() error {
	if c := l.subscribed(); c != nil {
		return c.Err()
	}
	return nil
}

// Value looks key up in the signal context once subscribed (which lets
// context.WithCancel children attach to it directly), and finds nothing
// before.
func (l *lazySignalContext) Value(key any) any {
	if c := l.subscribed(); c != nil {
		return c.Value(key)
	}
	return nil
}
