package gormbatch

import (
	"reflect"

	"gorm.io/gorm"
)

// Destinations. GORM scans into a destination while its statement runs and
// leaves a partial result when the statement is cut. So a batch statement
// reads into a private copy of its destination (swap); a successful
// statement copies it to the caller's destination at once (so a Go closure
// can use it), and the query's end either keeps what was copied (Done) or
// restores every destination to its value before the statement. Values a
// query computes outside GORM's callbacks (Scan, GoValue, batch-level Count)
// are published only when Done.

// dests is what a query must do to its destinations when it ends: store a
// private result if Done, or restore a destination published early if not.
// It is guarded by query.mu, and never touched again once the query has
// ended (query.ended): the destinations are the caller's then.
type dests []action

type action struct {
	f    func()
	undo bool // run, last first, if not Done; else run if Done
}

// take returns the actions and forgets them.
func (d *dests) take() dests {
	acts := *d
	*d = nil
	return acts
}

// apply runs the publish actions if done, else the undo ones (last first).
func (d dests) apply(done bool) {
	if done {
		for _, a := range d {
			if !a.undo {
				a.f()
			}
		}
		return
	}
	for i := len(d) - 1; i >= 0; i-- {
		if d[i].undo {
			d[i].f()
		}
	}
}

// onDone registers f to run if the query ends Done.
func (q *query) onDone(f func()) {
	q.mu.Lock()
	q.d = append(q.d, action{f: f})
	q.mu.Unlock()
}

// swapDest points the statement at a private copy of its destination. If
// the copy will be published early (early: a Go closure may read it), it
// records how to restore the original. It returns the private pointer (an
// invalid Value if the destination is not one it can copy, or the query has
// ended) and whether Statement.Model, being the destination, was swapped too.
func (q *query) swapDest(st *gorm.Statement, early bool) (priv reflect.Value, model bool) {
	v := reflect.ValueOf(st.Dest)
	if !v.IsValid() || (v.Kind() != reflect.Pointer && v.Kind() != reflect.Map) || v.IsNil() {
		return reflect.Value{}, false
	}
	q.mu.Lock()
	if q.ended {
		q.mu.Unlock()
		return reflect.Value{}, false
	}
	cur := reflect.Indirect(v)
	if early {
		snap := reflect.New(cur.Type())
		if cur.Kind() == reflect.Map {
			snap.Elem().Set(fresh(cur)) // publishing rewrites a map in place
		} else {
			snap.Elem().Set(cur) // publishing replaces the value, never writes into it
		}
		q.d = append(q.d, action{f: func() { setValue(v, snap.Elem()) }, undo: true})
	}
	q.mu.Unlock()

	priv = reflect.New(cur.Type())
	priv.Elem().Set(fresh(cur))
	if v.Kind() == reflect.Pointer && st.Model == st.Dest {
		st.Model, model = priv.Interface(), true
	}
	if v.Kind() == reflect.Map {
		st.Dest = priv.Elem().Interface()
	} else {
		st.Dest = priv.Interface()
	}
	st.ReflectValue = indirect(priv)
	return priv, model
}

// scan runs tx.Scan into a private copy of dest, published only if Done:
// Scan writes outside GORM's query callbacks.
func (q *query) scan(tx *gorm.DB, dest any) error {
	v := reflect.ValueOf(dest)
	priv := reflect.New(v.Type().Elem())
	if v.Kind() == reflect.Map {
		priv = reflect.New(v.Type())
	}
	priv.Elem().Set(fresh(reflect.Indirect(v)))
	res := tx.Scan(priv.Interface())
	q.idle() // Scan has closed its rows: no statement runs any more
	q.noteErr(nil, res.Error)
	if res.Error != nil {
		return res.Error
	}
	q.mu.Lock()
	q.rows += res.RowsAffected
	q.mu.Unlock()
	q.onDone(func() { setValue(v, priv.Elem()) })
	return nil
}

// fresh returns a copy of v that GORM can scan into without writing to v's
// memory: slices start empty (GORM reuses a slice's backing array), maps and
// pointers are copied one level deep, other values by value.
func fresh(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Slice:
		return reflect.Zero(v.Type())
	case reflect.Map:
		if v.IsNil() {
			return v
		}
		m := reflect.MakeMapWithSize(v.Type(), v.Len())
		for it := v.MapRange(); it.Next(); {
			m.SetMapIndex(it.Key(), it.Value())
		}
		return m
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		p := reflect.New(v.Type().Elem())
		p.Elem().Set(fresh(v.Elem()))
		return p
	}
	return v
}

// setValue stores val into the destination dst (a pointer, or a map whose
// contents are replaced).
func setValue(dst, val reflect.Value) {
	if dst.Kind() == reflect.Map {
		dst.Clear()
		for it := val.MapRange(); it.Next(); {
			dst.SetMapIndex(it.Key(), it.Value())
		}
		return
	}
	dst.Elem().Set(val)
}

// indirect follows pointers like gorm's Execute does for ReflectValue.
func indirect(v reflect.Value) reflect.Value {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() && v.CanAddr() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		v = v.Elem()
	}
	return v
}
