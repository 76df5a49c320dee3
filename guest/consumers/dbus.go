package consumers

import (
	"context"
	"fmt"
	"os"

	sdbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// DBus is the service manager over D-Bus (go-systemd's dbus package).
type DBus struct {
	conn *sdbus.Conn
}

// Connect connects to systemd: as root directly on its private socket
// (/run/systemd/private, which needs no dbus-daemon, absent from minimal
// guests), otherwise, or if that fails, through the system bus. It
// subscribes to the manager's signals, which is how job results arrive.
func Connect(ctx context.Context) (*DBus, error) {
	var conn *sdbus.Conn
	var err error
	if os.Geteuid() == 0 {
		conn, err = sdbus.NewSystemdConnectionContext(ctx)
	}
	if conn == nil {
		var err2 error
		if conn, err2 = sdbus.NewSystemConnectionContext(ctx); err2 != nil {
			if err != nil {
				return nil, fmt.Errorf("connect to systemd: /run/systemd/private: %v; system bus: %w", err, err2)
			}
			return nil, fmt.Errorf("connect to systemd over the system bus: %w", err2)
		}
	}
	if err := conn.Subscribe(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("subscribe to systemd's signals: %w", err)
	}
	return &DBus{conn: conn}, nil
}

// Close closes the connection.
func (d *DBus) Close() { d.conn.Close() }

// ActiveServices implements Systemd.
func (d *DBus) ActiveServices(ctx context.Context) ([]UnitState, error) {
	units, err := d.conn.ListUnitsByPatternsContext(ctx, []string{"active", "activating", "reloading"}, []string{"*.service"})
	if err != nil {
		return nil, err
	}
	out := make([]UnitState, 0, len(units))
	for _, u := range units {
		out = append(out, UnitState{Name: u.Name, ActiveState: u.ActiveState, SubState: u.SubState})
	}
	return out, nil
}

// Credentials implements Systemd: one GetAll of the unit's
// org.freedesktop.systemd1.Service properties. LoadCredential and
// LoadCredentialEncrypted are a(ss) (ID, path) since systemd 247/250;
// ImportCredential is as (the globs) from 254, and missing before.
func (d *DBus) Credentials(ctx context.Context, unit string) (UnitCredentials, error) {
	props, err := d.conn.GetUnitTypePropertiesContext(ctx, unit, "Service")
	if err != nil {
		return UnitCredentials{}, err
	}
	var c UnitCredentials
	if c.Load, err = decodeLoad(props["LoadCredential"]); err != nil {
		return c, fmt.Errorf("LoadCredential: %w", err)
	}
	if c.LoadEncrypted, err = decodeLoad(props["LoadCredentialEncrypted"]); err != nil {
		return c, fmt.Errorf("LoadCredentialEncrypted: %w", err)
	}
	if v, ok := props["ImportCredential"]; ok {
		c.ImportSupported = true
		globs, ok := v.([]string)
		if !ok {
			return c, fmt.Errorf("ImportCredential: unexpected type %T", v)
		}
		c.Import = globs
	}
	return c, nil
}

// decodeLoad decodes an a(ss) property as godbus hands it over: a slice of
// two-element []any (or nil when the property is absent).
func decodeLoad(v any) ([]LoadCredential, error) {
	if v == nil {
		return nil, nil
	}
	rows, ok := v.([][]any)
	if !ok {
		return nil, fmt.Errorf("unexpected type %T", v)
	}
	out := make([]LoadCredential, 0, len(rows))
	for _, r := range rows {
		if len(r) != 2 {
			return nil, fmt.Errorf("entry of %d fields, want 2", len(r))
		}
		id, ok1 := r[0].(string)
		path, ok2 := r[1].(string)
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("entry (%T, %T), want two strings", r[0], r[1])
		}
		out = append(out, LoadCredential{ID: id, Path: path})
	}
	return out, nil
}

// Restart implements Systemd.
func (d *DBus) Restart(ctx context.Context, unit string) (string, error) {
	return d.job(ctx, unit, d.conn.RestartUnitContext)
}

// Reload implements Systemd.
func (d *DBus) Reload(ctx context.Context, unit string) (string, error) {
	return d.job(ctx, unit, d.conn.ReloadUnitContext)
}

func (d *DBus) job(ctx context.Context, unit string, start func(context.Context, string, string, chan<- string) (int, error)) (string, error) {
	// Buffered: go-systemd sends the result while holding its lock.
	ch := make(chan string, 1)
	if _, err := start(ctx, unit, "replace", ch); err != nil {
		return "", err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// State implements Systemd.
func (d *DBus) State(ctx context.Context, unit string) (UnitState, error) {
	props, err := d.conn.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return UnitState{}, err
	}
	active, _ := props["ActiveState"].(string)
	sub, _ := props["SubState"].(string)
	return UnitState{Name: unit, ActiveState: active, SubState: sub}, nil
}

// MainPID returns a service's main process ID (0 when it has none).
func (d *DBus) MainPID(ctx context.Context, unit string) (uint32, error) {
	p, err := d.conn.GetServicePropertyContext(ctx, unit, "MainPID")
	if err != nil {
		return 0, err
	}
	var pid uint32
	if err := dbus.Store([]any{p.Value.Value()}, &pid); err != nil {
		return 0, fmt.Errorf("MainPID of %s: %w", unit, err)
	}
	return pid, nil
}
