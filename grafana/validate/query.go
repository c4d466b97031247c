package main

// Every PromQL expression of the dashboards run against a real Prometheus (grafana/check-prometheus
// starts one that scrapes a short local run): each must parse and evaluate, and each that reads
// only our own metrics (exporter `weather` in metrics.yaml) must return data.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// OwnExporter is the metrics.yaml exporter whose series a local run produces.
const OwnExporter = "weather"

// grafanaBuiltins are the values Grafana's own variables take in these queries: a rate window
// of a minute (several scrapes) and a range that covers the short run.
var grafanaBuiltins = map[string]string{
	"__rate_interval": "1m",
	"__interval":      "15s",
	"__range":         "10m",
	"__range_s":       "600",
}

// variableRef is a Grafana variable reference; `$1` (a regex group in label_replace) is not one.
var variableRef = regexp.MustCompile(`\$\{([A-Za-z_]\w*)(?::[^}]*)?\}|\$([A-Za-z_]\w*)`)

// Expr is one PromQL target of a dashboard panel.
type Expr struct {
	Dashboard, Panel, RefID string
	Expr                    string // as written
	Query                   string // with the variables replaced
	Own                     bool   // every metric it names is ours
}

// Expressions lists every Prometheus target of every dashboard under grafanaDir/dashboards.
func Expressions(grafanaDir string, c *Catalog) ([]Expr, error) {
	files, err := filepath.Glob(filepath.Join(grafanaDir, "dashboards", "*.json"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no dashboards under %s", grafanaDir)
	}
	var out []Expr
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		var doc struct {
			Panels     []rawPanel `json:"panels"`
			Templating struct {
				List []struct {
					Name  string `json:"name"`
					Type  string `json:"type"`
					Query string `json:"query"`
				} `json:"list"`
			} `json:"templating"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		vars := map[string]string{}
		for k, v := range grafanaBuiltins {
			vars[k] = v
		}
		for _, v := range doc.Templating.List {
			switch v.Type {
			case "custom": // every option, as Grafana renders "All" of a multi-value variable in =~
				vars[v.Name] = strings.Join(strings.Split(v.Query, ","), "|")
			case "textbox", "constant":
				vars[v.Name] = v.Query
			}
		}
		var walk func(ps []rawPanel) error
		walk = func(ps []rawPanel) error {
			for _, p := range ps {
				if err := walk(p.Panels); err != nil {
					return err
				}
				for _, rt := range p.Targets {
					var t rawTarget
					if err := json.Unmarshal(rt, &t); err != nil {
						return err
					}
					ds := p.Datasource
					if t.Datasource != nil {
						ds = t.Datasource
					}
					if ds == nil || c.Datasources[ds.UID] != "prometheus" {
						continue
					}
					e := Expr{Dashboard: filepath.Base(f), Panel: p.Title, RefID: t.RefID, Expr: t.Expr}
					var unknown []string
					e.Query = variableRef.ReplaceAllStringFunc(t.Expr, func(ref string) string {
						m := variableRef.FindStringSubmatch(ref)
						name := m[1] + m[2]
						if v, ok := vars[name]; ok {
							return v
						}
						unknown = append(unknown, name)
						return ref
					})
					if len(unknown) > 0 {
						return fmt.Errorf("%s: panel %q: unknown variables %v", e.Dashboard, e.Panel, unknown)
					}
					names := MetricNames(t.Expr)
					e.Own = len(names) > 0
					for _, n := range names {
						base := n
						for _, s := range []string{"_bucket", "_sum", "_count"} {
							if b, ok := strings.CutSuffix(n, s); ok && c.Metrics[b] == "histogram" {
								base = b
							}
						}
						e.Own = e.Own && c.Exporters[base] == OwnExporter
					}
					out = append(out, e)
				}
			}
			return nil
		}
		if err := walk(doc.Panels); err != nil {
			return nil, err
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Dashboard < out[j].Dashboard })
	return out, nil
}

// Query runs one instant query and returns how many series it gave.
func Query(client *http.Client, base, query string, at time.Time) (int, error) {
	u := strings.TrimRight(base, "/") + "/api/v1/query?" + url.Values{
		"query": {query}, "time": {fmt.Sprintf("%.3f", float64(at.UnixMilli())/1000)},
	}.Encode()
	resp, err := client.Get(u)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var body struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
		Data      struct {
			ResultType string            `json:"resultType"`
			Result     []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return 0, fmt.Errorf("HTTP %d, not Prometheus' JSON: %w", resp.StatusCode, err)
	}
	if body.Status != "success" {
		return 0, fmt.Errorf("%s: %s", body.ErrorType, body.Error)
	}
	if body.Data.ResultType == "scalar" || body.Data.ResultType == "string" {
		return 1, nil
	}
	return len(body.Data.Result), nil
}

// CheckQueries runs every expression; the problems are returned, the results printed.
func CheckQueries(exprs []Expr, base string, at time.Time, print func(string)) []error {
	client := &http.Client{Timeout: 30 * time.Second}
	var errs []error
	for _, e := range exprs {
		where := fmt.Sprintf("%s: panel %q target %s", e.Dashboard, e.Panel, e.RefID)
		n, err := Query(client, base, e.Query, at)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %s: %v", where, e.Query, err))
		case e.Own && n == 0:
			errs = append(errs, fmt.Errorf("%s: no data for %s", where, e.Query))
		default:
			kind := "parses (not our metrics: no data expected here)"
			if e.Own {
				kind = "data"
			}
			print(fmt.Sprintf("  %-12s %-45.45s %2d series, %s", e.Dashboard, e.Panel, n, kind))
		}
	}
	return errs
}

// runQueries evaluates every expression of the dashboards in dir at one instant.
func runQueries(dir, base string, at time.Time) int {
	c, err := LoadCatalog(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "validate:", err)
		return 2
	}
	exprs, err := Expressions(dir, c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "validate:", err)
		return 2
	}
	if len(exprs) == 0 {
		fmt.Fprintln(os.Stderr, "validate: no PromQL expression in the dashboards")
		return 2
	}
	errs := CheckQueries(exprs, base, at, func(s string) { fmt.Println(s) })
	for _, e := range errs {
		fmt.Fprintln(os.Stderr, e)
	}
	if len(errs) > 0 {
		fmt.Fprintf(os.Stderr, "validate: %d of %d PromQL expressions failed against %s\n", len(errs), len(exprs), base)
		return 1
	}
	own := 0
	for _, e := range exprs {
		if e.Own {
			own++
		}
	}
	fmt.Printf("validate: %d PromQL expressions evaluated by Prometheus, %d over our own metrics, each with data\n", len(exprs), own)
	return 0
}
