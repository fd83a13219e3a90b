package node

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/lni/dragonboat/v4/logger"
)

var dragonboatLoggerOnce sync.Once

// quietDragonboat routes Dragonboat's logs to slog at warning level and above.
// Dragonboat allows setting its logger factory once per process.
func quietDragonboat(base *slog.Logger) {
	dragonboatLoggerOnce.Do(func() {
		logger.SetLoggerFactory(func(pkg string) logger.ILogger {
			warn := slog.LevelWarn
			if pkg == "raft" || pkg == "config" {
				// Dragonboat's raft package reports every election step, and
				// its config package the plain-TCP transport, as warnings;
				// both are routine, so they go out at info.
				warn = slog.LevelInfo
			}
			return &dragonboatSlog{log: base.With("component", "dragonboat", "pkg", pkg), warn: warn}
		})
	})
}

type dragonboatSlog struct {
	log  *slog.Logger
	warn slog.Level // the level Dragonboat's warnings are logged at
}

func (d *dragonboatSlog) SetLevel(logger.LogLevel)      {}
func (d *dragonboatSlog) Debugf(string, ...interface{}) {}
func (d *dragonboatSlog) Infof(string, ...interface{})  {}
func (d *dragonboatSlog) Warningf(f string, a ...interface{}) {
	level := d.warn
	if strings.HasPrefix(f, "StaleRead called") {
		// Said on the first local read of the meta range; placement makes
		// such reads on purpose where a stale answer will do (meta.Replica.Read).
		level = slog.LevelInfo
	}
	if d.log.Enabled(context.Background(), level) {
		d.log.Log(context.Background(), level, fmt.Sprintf(f, a...))
	}
}
func (d *dragonboatSlog) Errorf(f string, a ...interface{}) {
	d.log.Log(context.Background(), slog.LevelError, fmt.Sprintf(f, a...))
}
func (d *dragonboatSlog) Panicf(f string, a ...interface{}) {
	msg := fmt.Sprintf(f, a...)
	d.log.Error(msg)
	panic(msg)
}
