package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestExpressionsOfTheDashboards(t *testing.T) {
	c, err := LoadCatalog(grafanaDir)
	if err != nil {
		t.Fatal(err)
	}
	exprs, err := Expressions(grafanaDir, c)
	if err != nil {
		t.Fatal(err)
	}
	own, other := 0, 0
	for _, e := range exprs {
		if variableRef.MatchString(e.Query) {
			t.Errorf("%s %q: a variable is left in %s", e.Dashboard, e.Panel, e.Query)
		}
		if e.Own {
			own++
		} else {
			other++
		}
		if strings.Contains(e.Expr, "weather_http_requests_total") && !e.Own {
			t.Errorf("%s is over our own metrics", e.Expr)
		}
		if strings.Contains(e.Expr, "kepler_") && e.Own {
			t.Errorf("%s is not over our own metrics", e.Expr)
		}
	}
	if own == 0 || other == 0 {
		t.Fatalf("own %d, other %d: want both", own, other)
	}
	// label_replace's "$1" is a regex group, not a Grafana variable.
	for _, e := range exprs {
		if strings.Contains(e.Expr, `"$1"`) && !strings.Contains(e.Query, `"$1"`) {
			t.Errorf("$1 replaced in %s", e.Query)
		}
	}
}

// fakePrometheus answers `bad(` with Prometheus' parse error, `empty` with no series and
// anything else with one.
func fakePrometheus() *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query().Get("query")
		var body map[string]any
		switch {
		case strings.Contains(q, "bad("):
			w.WriteHeader(http.StatusBadRequest)
			body = map[string]any{"status": "error", "errorType": "bad_data", "error": "parse error: unclosed left parenthesis"}
		case strings.Contains(q, "empty"):
			body = map[string]any{"status": "success", "data": map[string]any{"resultType": "vector", "result": []any{}}}
		default:
			body = map[string]any{"status": "success", "data": map[string]any{"resultType": "vector",
				"result": []any{map[string]any{"metric": map[string]string{}, "value": []any{1, "1"}}}}}
		}
		_ = json.NewEncoder(w).Encode(body)
	}))
}

func TestCheckQueries(t *testing.T) {
	srv := fakePrometheus()
	defer srv.Close()
	cases := []struct {
		e    Expr
		fail bool
	}{
		{Expr{Query: "sum(good)", Own: true}, false},
		{Expr{Query: "sum(empty)", Own: false}, false},
		{Expr{Query: "sum(empty)", Own: true}, true},
		{Expr{Query: "bad(", Own: false}, true},
	}
	for _, tc := range cases {
		errs := CheckQueries([]Expr{tc.e}, srv.URL, time.Now(), func(string) {})
		if (len(errs) > 0) != tc.fail {
			t.Errorf("%+v: errors %v, want failure %v", tc.e, errs, tc.fail)
		}
	}
}
