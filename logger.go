package gormbatch

import (
	"context"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// quietLogger wraps GORM's logger so that a batch statement the plugin
// stopped (its query's context had ended when it returned) is not logged as
// an error: it is expected, and the plugin's own log, Stats and hooks report
// it. Every other statement, errors included, is logged as before. A
// session given a logger of its own (gorm.Session{Logger: ...}) bypasses
// it.
func quietLogger(db *gorm.DB) {
	if _, ok := db.Config.Logger.(quiet); !ok && db.Config.Logger != nil {
		db.Config.Logger = quiet{db.Config.Logger}
	}
}

type quiet struct{ logger.Interface }

func (l quiet) LogMode(level logger.LogLevel) logger.Interface {
	return quiet{l.Interface.LogMode(level)}
}

func (l quiet) Trace(ctx context.Context, begin time.Time, fc func() (string, int64), err error) {
	if err != nil {
		if q := fromContext(ctx); q != nil && q.ctx != nil && q.ctx.Err() != nil {
			return // stopped by the plugin
		}
	}
	l.Interface.Trace(ctx, begin, fc, err)
}

// ParamsFilter forwards to the wrapped logger's, if it has one, so GORM's
// ParameterizedQueries setting still works.
func (l quiet) ParamsFilter(ctx context.Context, sql string, params ...any) (string, []any) {
	if f, ok := l.Interface.(gorm.ParamsFilter); ok {
		return f.ParamsFilter(ctx, sql, params...)
	}
	return sql, params
}
