package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

const grafanaDir = ".."

func TestRepositoryDashboardsAreValid(t *testing.T) {
	problems, n, err := ValidateDir(grafanaDir)
	if err != nil {
		t.Fatal(err)
	}
	if n < 4 {
		t.Fatalf("found %d dashboards, want tweets, pipeline, energy and traces", n)
	}
	for f, errs := range problems {
		for _, e := range errs {
			t.Errorf("%s: %v", f, e)
		}
	}
}

func TestMetricNames(t *testing.T) {
	cases := map[string][]string{
		`histogram_quantile(0.99, sum by (function, le) (rate(weather_http_request_duration_seconds_bucket{function=~"$function"}[$__rate_interval])))`:                                       {"weather_http_request_duration_seconds_bucket"},
		`sum by (function) (label_replace(increase(kepler_pod_cpu_joules_total{pod_namespace="weather"}[$__range] offset $run_offset), "function", "$1", "pod_name", "(ingest|counter)-.*"))`: {"kepler_pod_cpu_joules_total"},
		`a_total / on(job) group_left(instance) b_info > bool 0.5 unless c offset 5m`:                                                                                                         {"a_total", "b_info", "c"},
		`sum without (zone) (kepler_node_cpu_watts) * 1e3`: {"kepler_node_cpu_watts"},
	}
	for expr, want := range cases {
		if got := MetricNames(expr); !reflect.DeepEqual(got, want) {
			t.Errorf("MetricNames(%q) = %v, want %v", expr, got, want)
		}
	}
}

func TestHistogramSuffixesOnlyForHistograms(t *testing.T) {
	c, err := LoadCatalog(grafanaDir)
	if err != nil {
		t.Fatal(err)
	}
	if !c.HasMetric("weather_http_request_duration_seconds_count") {
		t.Error("a histogram's _count is not accepted")
	}
	if c.HasMetric("weather_http_requests_total_count") {
		t.Error("a counter accepted a histogram suffix")
	}
}

// mutate loads a valid dashboard of the repository, applies f to it and validates the result.
func mutate(t *testing.T, file string, f func(d map[string]any)) []error {
	t.Helper()
	c, err := LoadCatalog(grafanaDir)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(grafanaDir, "dashboards", file))
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatal(err)
	}
	if errs := ValidateDashboard(raw, c); len(errs) != 0 {
		t.Fatalf("base dashboard %s is not valid: %v", file, errs)
	}
	f(d)
	// Written to a temporary dashboards folder, as a real dashboard would be.
	dir := t.TempDir()
	out, _ := json.Marshal(d)
	path := filepath.Join(dir, file)
	if err := os.WriteFile(path, out, 0o644); err != nil {
		t.Fatal(err)
	}
	back, _ := os.ReadFile(path)
	return ValidateDashboard(back, c)
}

func panelAt(d map[string]any, i int) map[string]any { return d["panels"].([]any)[i].(map[string]any) }
func targetAt(p map[string]any, i int) map[string]any {
	return p["targets"].([]any)[i].(map[string]any)
}

func expectRejected(t *testing.T, errs []error, want string) {
	t.Helper()
	for _, e := range errs {
		if strings.Contains(e.Error(), want) {
			return
		}
	}
	t.Errorf("want an error containing %q, got %v", want, errs)
}

func TestRejectsUnknownMetric(t *testing.T) {
	errs := mutate(t, "pipeline.json", func(d map[string]any) {
		targetAt(panelAt(d, 0), 0)["expr"] = `sum(rate(weather_http_requets_total[5m]))`
	})
	expectRejected(t, errs, `metric "weather_http_requets_total" is not listed`)
}

func TestRejectsUnknownHistogramSeries(t *testing.T) {
	errs := mutate(t, "energy.json", func(d map[string]any) {
		targetAt(panelAt(d, 4), 0)["expr"] = `rate(kepler_pod_cpu_joules_bucket[5m])`
	})
	expectRejected(t, errs, `metric "kepler_pod_cpu_joules_bucket" is not listed`)
}

func TestRejectsUnknownDatasourceUID(t *testing.T) {
	errs := mutate(t, "tweets.json", func(d map[string]any) {
		panelAt(d, 0)["datasource"] = map[string]any{"type": "redis-datasource", "uid": "redis-typo"}
	})
	expectRejected(t, errs, `datasource uid "redis-typo" is not provisioned`)
}

func TestRejectsDatasourceTypeMismatch(t *testing.T) {
	errs := mutate(t, "traces.json", func(d map[string]any) {
		panelAt(d, 0)["datasource"] = map[string]any{"type": "prometheus", "uid": "tempo"}
	})
	expectRejected(t, errs, `has type "prometheus", provisioned as "tempo"`)
}

func TestRejectsUnknownTopLevelField(t *testing.T) {
	errs := mutate(t, "pipeline.json", func(d map[string]any) { d["schemaVersoin"] = 42 })
	expectRejected(t, errs, "schemaVersoin")
}

func TestRejectsUnknownPanelField(t *testing.T) {
	errs := mutate(t, "pipeline.json", func(d map[string]any) { panelAt(d, 1)["gridPoss"] = map[string]any{} })
	expectRejected(t, errs, "gridPoss")
}

func TestRejectsUnknownPanelOption(t *testing.T) {
	errs := mutate(t, "tweets.json", func(d map[string]any) {
		panelAt(d, 1)["options"].(map[string]any)["orientaton"] = "horizontal"
	})
	expectRejected(t, errs, "orientaton")
}

func TestRejectsUnknownPrometheusQueryField(t *testing.T) {
	errs := mutate(t, "pipeline.json", func(d map[string]any) { targetAt(panelAt(d, 0), 0)["exprr"] = "up" })
	expectRejected(t, errs, "exprr")
}

func TestRejectsUnknownRedisKeyAndWrite(t *testing.T) {
	errs := mutate(t, "tweets.json", func(d map[string]any) {
		tg := targetAt(panelAt(d, 1), 0)
		tg["keyName"] = "{weather}:cities"
		tg["command"] = "del"
	})
	expectRejected(t, errs, `redis key "{weather}:cities" is not one counter writes`)
	expectRejected(t, errs, `redis command "del"`)
}

// Before the hash tag, counter wrote weather:total; a dashboard still reading it would show nothing.
func TestRejectsRedisKeyWithoutHashTag(t *testing.T) {
	errs := mutate(t, "tweets.json", func(d map[string]any) { targetAt(panelAt(d, 0), 0)["keyName"] = "weather:total" })
	expectRejected(t, errs, `redis key "weather:total" is not one counter writes`)
}

// The geomap is the last panel of tweets.json.
func geomapOf(d map[string]any) map[string]any {
	ps := d["panels"].([]any)
	return ps[len(ps)-1].(map[string]any)
}

func geomapLocation(d map[string]any) map[string]any {
	layers := geomapOf(d)["options"].(map[string]any)["layers"].([]any)
	return layers[0].(map[string]any)["location"].(map[string]any)
}

func TestRejectsGeomapKeyTypo(t *testing.T) {
	errs := mutate(t, "tweets.json", func(d map[string]any) {
		targetAt(geomapOf(d), 0)["keyName"] = "{weather}:country-code"
	})
	expectRejected(t, errs, `redis key "{weather}:country-code" is not one counter writes`)
}

func TestRejectsUnknownGeomapLocationField(t *testing.T) {
	errs := mutate(t, "tweets.json", func(d map[string]any) {
		loc := geomapLocation(d)
		loc["gazeteer"] = loc["gazetteer"]
		delete(loc, "gazetteer")
	})
	expectRejected(t, errs, "gazeteer")
}

func TestRejectsUnknownGazetteer(t *testing.T) {
	errs := mutate(t, "tweets.json", func(d map[string]any) {
		geomapLocation(d)["gazetteer"] = "public/gazetteer/country.json"
	})
	expectRejected(t, errs, `gazetteer "public/gazetteer/country.json" is not one Grafana ships`)
}

func TestRejectsUnknownRedisQueryField(t *testing.T) {
	errs := mutate(t, "tweets.json", func(d map[string]any) { targetAt(panelAt(d, 0), 0)["keyname"] = "{weather}:total" })
	expectRejected(t, errs, `unknown redis-datasource query field "keyname"`)
}

func TestRejectsPanelWithoutDatasource(t *testing.T) {
	errs := mutate(t, "energy.json", func(d map[string]any) { delete(panelAt(d, 0), "datasource") })
	expectRejected(t, errs, "no datasource")
}

// The Helm values carry copies of the provisioning files; they must not drift apart.
func TestHelmValuesMatchProvisioning(t *testing.T) {
	var values struct {
		Plugins            []string                  `yaml:"plugins"`
		Datasources        map[string]map[string]any `yaml:"datasources"`
		DashboardProviders map[string]map[string]any `yaml:"dashboardProviders"`
	}
	read := func(path string, out any) {
		raw, err := os.ReadFile(filepath.Join(grafanaDir, path))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	read("values.yaml", &values)
	var ds, providers map[string]any
	read("provisioning/datasources/datasources.yaml", &ds)
	read("provisioning/dashboards/dashboards.yaml", &providers)
	if !reflect.DeepEqual(values.Datasources["datasources.yaml"], ds) {
		t.Error("values.yaml datasources differ from provisioning/datasources/datasources.yaml")
	}
	if !reflect.DeepEqual(values.DashboardProviders["dashboardproviders.yaml"], providers) {
		t.Error("values.yaml dashboardProviders differ from provisioning/dashboards/dashboards.yaml")
	}
	if !reflect.DeepEqual(values.Plugins, []string{"redis-datasource"}) {
		t.Errorf("plugins = %v, want [redis-datasource]", values.Plugins)
	}
}
