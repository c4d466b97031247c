// Command validate checks the Grafana dashboards of Weather Tweets offline.
//
//	go run . ../        (the grafana/ folder)
//
// For every grafana/dashboards/*.json it checks that:
//   - the dashboard decodes strictly into grafana-foundation-sdk's dashboard.Dashboard
//     (unknown fields rejected, at the top level with json.Decoder.DisallowUnknownFields and
//     in panels, targets and options with the SDK's own UnmarshalJSONStrict);
//   - every panel and target names a datasource {type, uid} provisioned in
//     provisioning/datasources/datasources.yaml, with the same type;
//   - every metric in every PromQL expression is listed in metrics.yaml;
//   - every Redis key a panel reads is one that counter writes, with a read-only command;
//   - every geomap layer that looks locations up names a gazetteer Grafana ships.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"gopkg.in/yaml.v3"
)

// redisKeys are the keys counter writes under the manifests' prefix `weather:`
// (knative/base/counter.yaml, REDIS_KEY_PREFIX), which it spells as the hash tag `{weather}:` so
// that every key lives in one Redis Cluster slot (counter::Keyspace in
// functions/counter/src/counts.rs).
var redisKeys = map[string]bool{
	"{weather}:total":         true,
	"{weather}:countries":     true,
	"{weather}:climas":        true,
	"{weather}:country-clima": true,
	"{weather}:country-codes": true,
}

// redisReadCommands are the redis-datasource commands a dashboard may run: reads only.
var redisReadCommands = map[string]bool{"get": true, "hgetall": true, "hget": true, "hmget": true, "hkeys": true, "hlen": true}

// gazetteers are the lookup tables Grafana ships (public/app/features/geo/gazetteer/ in
// grafana/grafana), by the "public/gazetteer/…" paths dashboards save, which newer Grafana
// rewrites to its build folder. countries.json matches a country by its ISO 3166-1 alpha-2 code
// (and alpha-3, and English name). A misspelt path is no decode error: the map would load and
// place nothing.
var gazetteers = map[string]bool{
	"public/gazetteer/countries.json":   true,
	"public/gazetteer/usa-states.json":  true,
	"public/gazetteer/airports.geojson": true,
}

// builtinAnnotationUID is Grafana's own annotation store, allowed for annotations only.
const builtinAnnotationUID = "-- Grafana --"

// Catalog is what the dashboards are checked against.
type Catalog struct {
	Metrics     map[string]string // metric name → type (counter, gauge, histogram)
	Exporters   map[string]string // metric name → its exporter in metrics.yaml
	Datasources map[string]string // uid → plugin type
}

type metricsFile struct {
	Exporters map[string]struct {
		Verified string `yaml:"verified"`
		Metrics  []struct {
			Name   string   `yaml:"name"`
			Type   string   `yaml:"type"`
			Labels []string `yaml:"labels"`
			Help   string   `yaml:"help"`
		} `yaml:"metrics"`
	} `yaml:"exporters"`
}

type datasourcesFile struct {
	APIVersion  int `yaml:"apiVersion"`
	Datasources []struct {
		Name           string            `yaml:"name"`
		UID            string            `yaml:"uid"`
		Type           string            `yaml:"type"`
		Access         string            `yaml:"access"`
		URL            string            `yaml:"url"`
		OrgID          int               `yaml:"orgId"`
		IsDefault      bool              `yaml:"isDefault"`
		Editable       bool              `yaml:"editable"`
		JSONData       map[string]any    `yaml:"jsonData"`
		SecureJSONData map[string]string `yaml:"secureJsonData"`
	} `yaml:"datasources"`
}

func decodeYAMLStrict(path string, out any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// LoadCatalog reads metrics.yaml and the datasource provisioning under the grafana/ folder.
func LoadCatalog(grafanaDir string) (*Catalog, error) {
	var mf metricsFile
	if err := decodeYAMLStrict(filepath.Join(grafanaDir, "metrics.yaml"), &mf); err != nil {
		return nil, err
	}
	c := &Catalog{Metrics: map[string]string{}, Exporters: map[string]string{}, Datasources: map[string]string{}}
	metricName := regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	for exporter, e := range mf.Exporters {
		if e.Verified == "" {
			return nil, fmt.Errorf("metrics.yaml: exporter %s says nowhere where its names were verified", exporter)
		}
		for _, m := range e.Metrics {
			switch m.Type {
			case "counter", "gauge", "histogram":
			default:
				return nil, fmt.Errorf("metrics.yaml: %s: unknown type %q", m.Name, m.Type)
			}
			if !metricName.MatchString(m.Name) {
				return nil, fmt.Errorf("metrics.yaml: %q is not a Prometheus metric name", m.Name)
			}
			if m.Type == "counter" && !strings.HasSuffix(m.Name, "_total") {
				return nil, fmt.Errorf("metrics.yaml: counter %s does not end in _total", m.Name)
			}
			if _, dup := c.Metrics[m.Name]; dup {
				return nil, fmt.Errorf("metrics.yaml: %s listed twice", m.Name)
			}
			c.Metrics[m.Name] = m.Type
			c.Exporters[m.Name] = exporter
		}
	}
	var df datasourcesFile
	if err := decodeYAMLStrict(filepath.Join(grafanaDir, "provisioning", "datasources", "datasources.yaml"), &df); err != nil {
		return nil, err
	}
	for _, d := range df.Datasources {
		if d.UID == "" || d.Type == "" {
			return nil, fmt.Errorf("datasources.yaml: datasource %q needs a uid and a type", d.Name)
		}
		for k, v := range d.SecureJSONData {
			// Secrets come from the environment ($VAR), never literally from this file.
			if !strings.HasPrefix(v, "$") {
				return nil, fmt.Errorf("datasources.yaml: %s secureJsonData.%s is a literal, use $ENV_VAR", d.Name, k)
			}
		}
		c.Datasources[d.UID] = d.Type
	}
	return c, nil
}

// HasMetric reports whether a series name is listed, allowing a histogram's _bucket/_sum/_count.
func (c *Catalog) HasMetric(name string) bool {
	if _, ok := c.Metrics[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && c.Metrics[base] == "histogram" {
			return true
		}
	}
	return false
}

var (
	promStrings   = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	grafanaVars   = regexp.MustCompile(`\$\{[^}]*\}|\$\w+`)
	labelMatchers = regexp.MustCompile(`\{[^{}]*\}`)
	rangeSelector = regexp.MustCompile(`\[[^\]]*\]`)
	labelLists    = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promTokens    = regexp.MustCompile(`[a-zA-Z0-9_:.]+(\s*\()?`)
	promKeywords  = map[string]bool{
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"bool": true, "and": true, "or": true, "unless": true, "offset": true, "atan2": true,
		"inf": true, "nan": true, "Inf": true, "NaN": true,
	}
)

// MetricNames returns the metric names a PromQL expression selects: identifiers that are not
// functions (followed by "("), keywords, label names (inside {…} or by/without/on(…)),
// strings, durations or Grafana variables.
func MetricNames(expr string) []string {
	s := promStrings.ReplaceAllString(expr, `""`)
	s = grafanaVars.ReplaceAllString(s, " ")
	s = labelMatchers.ReplaceAllString(s, " ")
	s = rangeSelector.ReplaceAllString(s, " ")
	s = labelLists.ReplaceAllString(s, " ")
	seen := map[string]bool{}
	var names []string
	for _, m := range promTokens.FindAllStringSubmatch(s, -1) {
		tok := strings.TrimRight(strings.TrimSuffix(strings.TrimSpace(m[0]), "("), " \t\n")
		if m[1] != "" || tok == "" || promKeywords[tok] {
			continue
		}
		if c := tok[0]; (c >= '0' && c <= '9') || c == '.' {
			continue // a number or a duration
		}
		if !seen[tok] {
			seen[tok] = true
			names = append(names, tok)
		}
	}
	return names
}

// rawPanel is the part of a panel the cross-checks read; the SDK types decode the rest.
type rawPanel struct {
	ID         any               `json:"id"`
	Title      string            `json:"title"`
	Type       string            `json:"type"`
	Datasource *rawDatasource    `json:"datasource"`
	Targets    []json.RawMessage `json:"targets"`
	Options    json.RawMessage   `json:"options"`
	Panels     []rawPanel        `json:"panels"`
}

// geomapOptions is the part of a geomap panel's options the cross-checks read.
type geomapOptions struct {
	Layers []struct {
		Name     string `json:"name"`
		Location *struct {
			Mode      string `json:"mode"`
			Gazetteer string `json:"gazetteer"`
		} `json:"location"`
	} `json:"layers"`
}

type rawDatasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type rawTarget struct {
	RefID      string         `json:"refId"`
	Datasource *rawDatasource `json:"datasource"`
	Expr       string         `json:"expr"`
	Command    string         `json:"command"`
	KeyName    string         `json:"keyName"`
	Type       string         `json:"type"`
	Query      string         `json:"query"`
}

// ValidateDashboard returns every problem found in one dashboard's JSON.
func ValidateDashboard(raw []byte, c *Catalog) []error {
	var errs []error

	// 1. Strict decoding. json.Decoder.DisallowUnknownFields rejects unknown top-level fields
	//    (dashboard.Dashboard has no UnmarshalJSON of its own), but below that Panel's custom
	//    UnmarshalJSON is lenient; the SDK's UnmarshalJSONStrict is strict all the way down
	//    (panels, rows, templating, annotations, panel options and fieldConfig of the core panel
	//    plugins, Prometheus and Tempo queries). Queries of plugins the SDK does not model (the
	//    redis-datasource plugin) are kept as an untyped bag: their fields are checked below.
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var top dashboard.Dashboard
	if err := dec.Decode(&top); err != nil {
		errs = append(errs, fmt.Errorf("decode: %w", err))
	}
	var strict dashboard.Dashboard
	if err := strictError(strict.UnmarshalJSONStrict(raw)); err != nil {
		errs = append(errs, fmt.Errorf("strict decode: %w", err))
	}
	if strict.Title == nil || *strict.Title == "" {
		errs = append(errs, errors.New("dashboard has no title"))
	}
	if strict.Uid == nil || *strict.Uid == "" {
		errs = append(errs, errors.New("dashboard has no uid"))
	}

	// 2. Cross-checks on the raw panels (rows may nest panels).
	var doc struct {
		Panels      []rawPanel `json:"panels"`
		Annotations struct {
			List []struct {
				Name       string         `json:"name"`
				Datasource *rawDatasource `json:"datasource"`
			} `json:"list"`
		} `json:"annotations"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return append(errs, fmt.Errorf("read panels: %w", err))
	}
	for _, a := range doc.Annotations.List {
		if a.Datasource != nil && a.Datasource.UID != builtinAnnotationUID {
			errs = append(errs, c.checkDatasource("annotation "+a.Name, a.Datasource)...)
		}
	}
	if len(doc.Panels) == 0 {
		errs = append(errs, errors.New("dashboard has no panels"))
	}
	var walk func(ps []rawPanel)
	walk = func(ps []rawPanel) {
		for _, p := range ps {
			where := fmt.Sprintf("panel %v %q", p.ID, p.Title)
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Datasource == nil {
				errs = append(errs, fmt.Errorf("%s: no datasource", where))
			} else {
				errs = append(errs, c.checkDatasource(where, p.Datasource)...)
			}
			if len(p.Targets) == 0 {
				errs = append(errs, fmt.Errorf("%s: no queries", where))
			}
			for _, rt := range p.Targets {
				errs = append(errs, c.checkTarget(where, p.Datasource, rt)...)
			}
			if p.Type == "geomap" {
				errs = append(errs, checkGeomap(where, p.Options)...)
			}
		}
	}
	walk(doc.Panels)
	return errs
}

// checkGeomap checks that every layer placing rows by lookup names a gazetteer Grafana ships,
// explicitly (Grafana would default an empty one to countries; the dashboard says which).
func checkGeomap(where string, raw json.RawMessage) []error {
	var o geomapOptions
	if err := json.Unmarshal(raw, &o); err != nil {
		return []error{fmt.Errorf("%s: geomap options: %w", where, err)}
	}
	var errs []error
	for _, l := range o.Layers {
		if l.Location != nil && l.Location.Mode == "lookup" && !gazetteers[l.Location.Gazetteer] {
			errs = append(errs, fmt.Errorf("%s: layer %q: gazetteer %q is not one Grafana ships", where, l.Name, l.Location.Gazetteer))
		}
	}
	return errs
}

// strictError undoes a quirk of the SDK (v0.0.22): UnmarshalJSONStrict returns its error list
// as a cog.BuildErrors even when it is empty, a non-nil error interface holding a nil slice.
func strictError(err error) error {
	var be cog.BuildErrors
	if errors.As(err, &be) && len(be) == 0 {
		return nil
	}
	return err
}

func (c *Catalog) checkDatasource(where string, ds *rawDatasource) []error {
	typ, ok := c.Datasources[ds.UID]
	switch {
	case !ok:
		return []error{fmt.Errorf("%s: datasource uid %q is not provisioned", where, ds.UID)}
	case ds.Type != typ:
		return []error{fmt.Errorf("%s: datasource %q has type %q, provisioned as %q", where, ds.UID, ds.Type, typ)}
	}
	return nil
}

func (c *Catalog) checkTarget(where string, panelDS *rawDatasource, raw json.RawMessage) []error {
	var errs []error
	var t rawTarget
	if err := json.Unmarshal(raw, &t); err != nil {
		return []error{fmt.Errorf("%s: target: %w", where, err)}
	}
	where = fmt.Sprintf("%s target %s", where, t.RefID)
	ds := panelDS
	if t.Datasource != nil {
		errs = append(errs, c.checkDatasource(where, t.Datasource)...)
		ds = t.Datasource
	}
	if ds == nil {
		return errs
	}
	switch c.Datasources[ds.UID] {
	case "prometheus":
		if strings.TrimSpace(t.Expr) == "" {
			errs = append(errs, fmt.Errorf("%s: empty PromQL expression", where))
		}
		names := MetricNames(t.Expr)
		if len(names) == 0 && t.Expr != "" {
			errs = append(errs, fmt.Errorf("%s: no metric in %q", where, t.Expr))
		}
		for _, n := range names {
			if !c.HasMetric(n) {
				errs = append(errs, fmt.Errorf("%s: metric %q is not listed in metrics.yaml", where, n))
			}
		}
	case "redis-datasource":
		// The SDK does not model this plugin's query, so its fields are checked here.
		var fields map[string]json.RawMessage
		_ = json.Unmarshal(raw, &fields)
		for k := range fields {
			switch k {
			case "refId", "datasource", "type", "command", "keyName", "field", "query", "hide", "streaming", "streamingInterval", "streamingCapacity", "streamingDataType":
			default:
				errs = append(errs, fmt.Errorf("%s: unknown redis-datasource query field %q", where, k))
			}
		}
		if t.Type != "command" {
			errs = append(errs, fmt.Errorf("%s: redis query type %q, want \"command\"", where, t.Type))
		}
		if !redisReadCommands[t.Command] {
			errs = append(errs, fmt.Errorf("%s: redis command %q is not a read this dashboard may run", where, t.Command))
		}
		if !redisKeys[t.KeyName] {
			errs = append(errs, fmt.Errorf("%s: redis key %q is not one counter writes", where, t.KeyName))
		}
	}
	return errs
}

// ValidateDir validates every dashboard under grafanaDir/dashboards and returns the problems
// per file name.
func ValidateDir(grafanaDir string) (map[string][]error, int, error) {
	c, err := LoadCatalog(grafanaDir)
	if err != nil {
		return nil, 0, err
	}
	files, err := filepath.Glob(filepath.Join(grafanaDir, "dashboards", "*.json"))
	if err != nil {
		return nil, 0, err
	}
	if len(files) == 0 {
		return nil, 0, fmt.Errorf("no dashboards under %s", filepath.Join(grafanaDir, "dashboards"))
	}
	problems := map[string][]error{}
	uids := map[string]string{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, 0, err
		}
		if errs := ValidateDashboard(raw, c); len(errs) > 0 {
			problems[filepath.Base(f)] = errs
		}
		var d struct {
			UID string `json:"uid"`
		}
		if json.Unmarshal(raw, &d) == nil && d.UID != "" {
			if other, dup := uids[d.UID]; dup {
				problems[filepath.Base(f)] = append(problems[filepath.Base(f)], fmt.Errorf("uid %q also used by %s", d.UID, other))
			}
			uids[d.UID] = filepath.Base(f)
		}
	}
	return problems, len(files), nil
}

func init() {
	// Panel options and dataqueries are decoded through the SDK's plugin registry.
	plugins.RegisterDefaultPlugins()
}

func main() {
	prometheus := flag.String("prometheus", "", "instead of the offline checks, run every PromQL expression against this Prometheus")
	at := flag.Float64("at", 0, "with -prometheus: evaluate at this Unix time in seconds (default: now)")
	flag.Parse()
	dir := "../"
	if flag.NArg() > 0 {
		dir = flag.Arg(0)
	}
	if *prometheus != "" {
		when := time.Now()
		if *at > 0 {
			when = time.UnixMilli(int64(*at * 1000))
		}
		os.Exit(runQueries(dir, *prometheus, when))
	}
	problems, n, err := ValidateDir(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "validate:", err)
		os.Exit(2)
	}
	names := make([]string, 0, len(problems))
	for f := range problems {
		names = append(names, f)
	}
	sort.Strings(names)
	for _, f := range names {
		for _, e := range problems[f] {
			fmt.Fprintf(os.Stderr, "%s: %v\n", f, e)
		}
	}
	if len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "validate: %d of %d dashboards have problems\n", len(problems), n)
		os.Exit(1)
	}
	fmt.Printf("validate: %d dashboards OK (strict SDK decode, datasources, metrics, Redis keys, gazetteers)\n", n)
}
