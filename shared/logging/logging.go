// Package logging builds the loggers both vmcred binaries use: one shape
// for a boot service whose stderr goes to journald, one for a person at a
// terminal. Library packages do not log; the commands pass a logger down.
//
// Lines are encoded, levelled and written by zap's core (package zapcore).
// The Logger type here stands in for package zap's own, whose HTTP level
// handler links net/http and crypto/tls into every binary that imports it:
// for the guest agent, a boot service that needs neither, that was 1 MB of
// its 5.7 MB and ~0.25 ms of every start.
//
// It takes the writer and the journald decision as arguments, so it has no
// OS access of its own; host and guest commands may import it.
package logging

import (
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"go.uber.org/zap/zapcore"
)

// Config says where and how to log.
type Config struct {
	// Journald is true when stderr is connected to the journal
	// ($JOURNAL_STREAM matches stderr): lines then carry a syslog priority
	// prefix such as "<4>" and no timestamp, since journald adds its own.
	Journald bool
	// Level is the lowest level written.
	Level zapcore.Level
	// Name prefixes CLI lines, e.g. "vmcred-guest".
	Name string
}

// Logger writes levelled lines with structured fields through a
// zapcore.Core. A nil *Logger discards everything. Its methods are safe
// for concurrent use.
type Logger struct {
	core zapcore.Core
	name string
	// min is the lowest level written, on top of the core's own; shared
	// with every logger With derives, so SetLevel applies to all of them.
	min *atomic.Int32
}

// New returns a logger writing to w. It never samples (a boot service that
// drops repeated lines hides problems) and never adds stack traces.
func New(w io.Writer, cfg Config) *Logger {
	ec := zapcore.EncoderConfig{
		MessageKey:       "msg",
		LevelKey:         "level",
		NameKey:          "logger",
		EncodeLevel:      cliLevel,
		EncodeName:       zapcore.FullNameEncoder,
		EncodeDuration:   zapcore.StringDurationEncoder,
		ConsoleSeparator: " ",
	}
	if cfg.Journald {
		ec.EncodeLevel = syslogPriority
		ec.NameKey = zapcore.OmitKey
	}
	l := NewCore(zapcore.NewCore(zapcore.NewConsoleEncoder(ec), zapcore.AddSync(w), cfg.Level))
	if cfg.Name != "" && !cfg.Journald {
		l.name = cfg.Name
	}
	return l
}

// NewCore returns a logger writing through core: for tests, and for sinks
// New does not build.
func NewCore(core zapcore.Core) *Logger {
	min := new(atomic.Int32)
	min.Store(int32(zapcore.DebugLevel))
	return &Logger{core: core, min: min}
}

// SetLevel makes the logger, and every logger With derived from it, drop
// lines below level (the core's own level still applies): what a
// command's --quiet or --log-level asks for.
func (l *Logger) SetLevel(level zapcore.Level) {
	if l != nil {
		l.min.Store(int32(level))
	}
}

// ParseLevel reads a level name: debug, info, warn (or warning) or error.
func ParseLevel(s string) (zapcore.Level, error) {
	switch s {
	case "debug":
		return zapcore.DebugLevel, nil
	case "info":
		return zapcore.InfoLevel, nil
	case "warn", "warning":
		return zapcore.WarnLevel, nil
	case "error":
		return zapcore.ErrorLevel, nil
	}
	return zapcore.InfoLevel, fmt.Errorf("unknown log level %q (debug, info, warn or error)", s)
}

// Debug logs msg at debug level.
func (l *Logger) Debug(msg string, fields ...zapcore.Field) {
	l.log(zapcore.DebugLevel, msg, fields)
}

// Info logs msg at info level.
func (l *Logger) Info(msg string, fields ...zapcore.Field) { l.log(zapcore.InfoLevel, msg, fields) }

// Warn logs msg at warning level.
func (l *Logger) Warn(msg string, fields ...zapcore.Field) { l.log(zapcore.WarnLevel, msg, fields) }

// Error logs msg at error level.
func (l *Logger) Error(msg string, fields ...zapcore.Field) {
	l.log(zapcore.ErrorLevel, msg, fields)
}

// With returns a logger that adds fields to every line.
func (l *Logger) With(fields ...zapcore.Field) *Logger {
	if l == nil {
		return nil
	}
	return &Logger{core: l.core.With(fields), name: l.name, min: l.min}
}

// Sync flushes buffered lines. On a pipe or a terminal it may return
// EINVAL, which callers ignore.
func (l *Logger) Sync() error {
	if l == nil {
		return nil
	}
	return l.core.Sync()
}

func (l *Logger) log(level zapcore.Level, msg string, fields []zapcore.Field) {
	if l == nil || level < zapcore.Level(l.min.Load()) {
		return
	}
	ent := zapcore.Entry{Level: level, Time: time.Now(), LoggerName: l.name, Message: msg}
	if ce := l.core.Check(ent, nil); ce != nil {
		ce.Write(fields...)
	}
}

// String is a field holding a string.
func String(key, val string) zapcore.Field {
	return zapcore.Field{Key: key, Type: zapcore.StringType, String: val}
}

// Int is a field holding an integer.
func Int(key string, val int) zapcore.Field {
	return zapcore.Field{Key: key, Type: zapcore.Int64Type, Integer: int64(val)}
}

// Bool is a field holding a boolean.
func Bool(key string, val bool) zapcore.Field {
	var i int64
	if val {
		i = 1
	}
	return zapcore.Field{Key: key, Type: zapcore.BoolType, Integer: i}
}

// Strings is a field holding a list of strings.
func Strings(key string, val []string) zapcore.Field {
	return zapcore.Field{Key: key, Type: zapcore.ArrayMarshalerType, Interface: stringArray(val)}
}

// Stringer is a field holding val's String(), called only if the line is
// written.
func Stringer(key string, val fmt.Stringer) zapcore.Field {
	return zapcore.Field{Key: key, Type: zapcore.StringerType, Interface: val}
}

type stringArray []string

func (a stringArray) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, s := range a {
		enc.AppendString(s)
	}
	return nil
}

// syslogPriority writes the sd-daemon(3) prefix journald parses from stream
// lines (SyslogLevelPrefix=yes is the default).
func syslogPriority(l zapcore.Level, enc zapcore.PrimitiveArrayEncoder) {
	p := "<6>"
	switch {
	case l <= zapcore.DebugLevel:
		p = "<7>"
	case l == zapcore.InfoLevel:
		p = "<6>"
	case l == zapcore.WarnLevel:
		p = "<4>"
	case l == zapcore.ErrorLevel:
		p = "<3>"
	default:
		p = "<2>"
	}
	enc.AppendString(p)
}

func cliLevel(l zapcore.Level, enc zapcore.PrimitiveArrayEncoder) {
	enc.AppendString(l.String() + ":")
}
