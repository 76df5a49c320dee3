// Package logging builds the zap loggers both vmcred binaries use: one shape
// for a boot service whose stderr goes to journald, one for a person at a
// terminal. Library packages do not log; the commands pass a logger down.
//
// It takes the writer and the journald decision as arguments, so it has no
// OS access of its own; host and guest commands may import it.
package logging

import (
	"io"

	"go.uber.org/zap"
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

// New returns a logger writing to w. It never samples (a boot service that
// drops repeated lines hides problems) and never adds stack traces.
func New(w io.Writer, cfg Config) *zap.Logger {
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
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(ec), zapcore.AddSync(w), cfg.Level)
	l := zap.New(core)
	if cfg.Name != "" && !cfg.Journald {
		l = l.Named(cfg.Name)
	}
	return l
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
