// Command knative-check runs Knative Serving's own admission and rendering code on our
// manifests (knative.dev/serving v0.42.2, Knative 1.15 — the newest Serving the Go module proxy
// builds; the cluster runs 1.23, see Caveat), so what a cluster's webhook would refuse fails
// here first:
//
//	knative-check validate FILE...     every serving.knative.dev/v1 Service: decode, SetDefaults,
//	                                   Validate, as Serving's webhook does on create
//	knative-check mutants FILE         broken variants of the first Service of FILE (the fields
//	                                   the CRD schema lets through) must each be refused
//	knative-check render DIR FILE...   the defaulted Services, and the Deployment, Pod and
//	                                   PodAutoscaler Serving's controllers would make of each
//	knative-check compare A B          the Services of A and of B are equal after defaulting
//
// The cluster configuration is Knative's defaults (config-defaults, config-features,
// config-autoscaler, config-deployment), which is what knative/README.md installs; -config DIR
// reads ConfigMaps (YAML, by metadata.name) that override them, e.g. a feature flag a cluster
// turns on.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	netcfg "knative.dev/networking/pkg/config"
	"knative.dev/pkg/apis"
	"knative.dev/pkg/logging"
	"knative.dev/pkg/metrics"
	pkgtracing "knative.dev/pkg/tracing/config"
	autoscalingv1alpha1 "knative.dev/serving/pkg/apis/autoscaling/v1alpha1"
	apiconfig "knative.dev/serving/pkg/apis/config"
	v1 "knative.dev/serving/pkg/apis/serving/v1"
	autoscalercfg "knative.dev/serving/pkg/autoscaler/config"
	"knative.dev/serving/pkg/deployment"
	configresources "knative.dev/serving/pkg/reconciler/configuration/resources"
	revconfig "knative.dev/serving/pkg/reconciler/revision/config"
	revresources "knative.dev/serving/pkg/reconciler/revision/resources"
	svcresources "knative.dev/serving/pkg/reconciler/service/resources"
	"sigs.k8s.io/yaml"
)

// Caveat is printed with every result: what this check is and is not.
const Caveat = "Knative Serving v0.42.2 (1.15) admission and rendering logic, run against " +
	"manifests written for Knative 1.23: a rule added after 1.15 is not checked, one relaxed since is"

// QueueImage stands in for config-deployment's queue-sidecar-image, which has no default.
const QueueImage = "gcr.io/knative-releases/knative.dev/serving/cmd/queue:v1.15"

func main() {
	configDir := flag.String("config", "", "folder of ConfigMap YAML files overriding Knative's defaults")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: knative-check [-config DIR] validate FILE... | mutants FILE | render DIR FILE... | compare A B")
		flag.PrintDefaults()
	}
	flag.Parse()
	args := flag.Args()
	if len(args) < 2 {
		flag.Usage()
		os.Exit(2)
	}
	// Serving's controllers read their namespace from the environment (system.Namespace()).
	if os.Getenv("SYSTEM_NAMESPACE") == "" {
		os.Setenv("SYSTEM_NAMESPACE", "knative-serving")
	}
	cfg, err := loadConfig(*configDir)
	if err == nil {
		switch args[0] {
		case "validate":
			err = validateFiles(cfg, args[1:])
		case "mutants":
			err = mutants(cfg, args[1])
		case "render":
			if len(args) < 3 {
				flag.Usage()
				os.Exit(2)
			}
			err = render(cfg, args[1], args[2:])
		case "compare":
			if len(args) != 3 {
				flag.Usage()
				os.Exit(2)
			}
			err = compare(cfg, args[1], args[2])
		default:
			flag.Usage()
			os.Exit(2)
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "knative-check: %v\n(%s)\n", err, Caveat)
		os.Exit(1)
	}
}

// loadConfig is the configuration Serving's webhook and revision controller hold: Knative's
// defaults (an empty ConfigMap) unless dir has a ConfigMap of that name.
func loadConfig(dir string) (*revconfig.Config, error) {
	data := map[string]map[string]string{}
	if dir != "" {
		files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			docs, err := readDocs(f)
			if err != nil {
				return nil, err
			}
			for _, d := range docs {
				var cm corev1.ConfigMap
				if err := json.Unmarshal(d, &cm); err != nil || cm.Kind != "ConfigMap" {
					return nil, fmt.Errorf("%s: not a ConfigMap", f)
				}
				data[cm.Name] = cm.Data
			}
		}
	}
	deploymentData := map[string]string{deployment.QueueSidecarImageKey: QueueImage}
	for k, v := range data["config-deployment"] {
		deploymentData[k] = v
	}
	var errs []error
	keep := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	c := &revconfig.Config{Config: &apiconfig.Config{}}
	var err error
	c.Defaults, err = apiconfig.NewDefaultsConfigFromMap(data["config-defaults"])
	keep(err)
	c.Features, err = apiconfig.NewFeaturesConfigFromMap(data["config-features"])
	keep(err)
	c.Autoscaler, err = autoscalercfg.NewConfigFromMap(data["config-autoscaler"])
	keep(err)
	c.Deployment, err = deployment.NewConfigFromMap(deploymentData)
	keep(err)
	c.Network, err = netcfg.NewConfigFromMap(data["config-network"])
	keep(err)
	c.Observability, err = metrics.NewObservabilityConfigFromConfigMap(&corev1.ConfigMap{Data: data["config-observability"]})
	keep(err)
	c.Logging, err = logging.NewConfigFromMap(data["config-logging"])
	keep(err)
	c.Tracing, err = pkgtracing.NewTracingConfigFromMap(data["config-tracing"])
	keep(err)
	return c, errors.Join(errs...)
}

// webhookContext is what Serving's webhook gives SetDefaults and Validate on a create by a user.
func webhookContext(cfg *revconfig.Config) context.Context {
	ctx := apiconfig.ToContext(context.Background(), cfg.Config)
	ctx = apis.WithinCreate(ctx)
	return apis.WithUserInfo(ctx, &authv1.UserInfo{Username: "weather-tweets-check"})
}

// readDocs is every non-empty YAML document of a file, as JSON.
func readDocs(path string) ([][]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var out [][]byte
	for {
		doc, err := reader.Read()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(bytes.TrimSpace(j)) == 0 || string(bytes.TrimSpace(j)) == "null" {
			continue
		}
		// `kubectl get -o yaml` answers a List: its items are the documents.
		var list struct {
			Kind  string            `json:"kind"`
			Items []json.RawMessage `json:"items"`
		}
		if json.Unmarshal(j, &list) == nil && list.Kind == "List" {
			for _, item := range list.Items {
				out = append(out, item)
			}
			continue
		}
		out = append(out, j)
	}
}

// services are the Knative Services of a file, decoded the way the webhook decodes them
// (unknown fields ignored: the CRD schema is the API server's job, knative/validate checks it).
func services(path string) ([]*v1.Service, error) {
	docs, err := readDocs(path)
	if err != nil {
		return nil, err
	}
	var out []*v1.Service
	for _, d := range docs {
		var u unstructured.Unstructured
		if err := u.UnmarshalJSON(d); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if u.GetAPIVersion() != "serving.knative.dev/v1" || u.GetKind() != "Service" {
			continue
		}
		svc := &v1.Service{}
		if err := json.Unmarshal(d, svc); err != nil {
			return nil, fmt.Errorf("%s: Service %s: %w", path, u.GetName(), err)
		}
		out = append(out, svc)
	}
	return out, nil
}

// admit is the webhook's work on a create: defaulting, then validation of the defaulted object.
func admit(cfg *revconfig.Config, svc *v1.Service) error {
	ctx := webhookContext(cfg)
	svc.SetDefaults(ctx)
	// The webhook refuses on errors only; warnings go back to the client as warnings.
	if fe := svc.Validate(ctx).Filter(apis.ErrorLevel); fe != nil {
		return errors.New(strings.ReplaceAll(fe.Error(), "\n", "; "))
	}
	return nil
}

// warnings are what the webhook would send back with an admitted Service.
func warnings(cfg *revconfig.Config, svc *v1.Service) string {
	ctx := webhookContext(cfg)
	s := svc.DeepCopy()
	s.SetDefaults(ctx)
	if fe := s.Validate(ctx).Filter(apis.WarningLevel); fe != nil {
		return strings.ReplaceAll(fe.Error(), "\n", "; ")
	}
	return ""
}

func validateFiles(cfg *revconfig.Config, paths []string) error {
	var failed []string
	n := 0
	for _, path := range paths {
		svcs, err := services(path)
		if err != nil {
			return err
		}
		for _, svc := range svcs {
			n++
			if w := warnings(cfg, svc); w != "" {
				failed = append(failed, fmt.Sprintf("%s: Service %s/%s admitted with warnings: %s", path, svc.Namespace, svc.Name, w))
			}
			if err := admit(cfg, svc); err != nil {
				failed = append(failed, fmt.Sprintf("%s: Service %s/%s refused: %v", path, svc.Namespace, svc.Name, err))
			}
		}
	}
	if len(failed) > 0 {
		return errors.New(strings.Join(failed, "\n"))
	}
	if n == 0 {
		return fmt.Errorf("no serving.knative.dev/v1 Service in %v", paths)
	}
	fmt.Printf("  %d Services admitted by Knative's webhook logic (%s)\n", n, Caveat)
	return nil
}

// render writes what Serving would create for each Service: the Configuration's first
// Revision's Deployment (user container plus queue-proxy), a Pod of it, and its PodAutoscaler.
func render(cfg *revconfig.Config, dir string, paths []string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var defaulted, deployments, pods, pas []any
	for _, path := range paths {
		svcs, err := services(path)
		if err != nil {
			return err
		}
		for _, svc := range svcs {
			if err := admit(cfg, svc); err != nil {
				return fmt.Errorf("%s: Service %s refused: %v", path, svc.Name, err)
			}
			defaulted = append(defaulted, svc)
			ctx := webhookContext(cfg)
			conf := svcresources.MakeConfiguration(svc)
			conf.Generation = 1
			conf.SetDefaults(ctx)
			rev := configresources.MakeRevision(ctx, conf, time.Unix(0, 0).UTC())
			rev.SetDefaults(ctx)
			// The API server would give it one; the Deployment's selector names it.
			rev.UID = types.UID("00000000-0000-4000-8000-" + fmt.Sprintf("%012x", len(deployments)+1))
			if fe := rev.Validate(ctx); fe != nil {
				return fmt.Errorf("Revision %s refused: %v", rev.Name, fe)
			}
			d, err := revresources.MakeDeployment(rev, cfg)
			if err != nil {
				return fmt.Errorf("Revision %s: %w", rev.Name, err)
			}
			d.APIVersion, d.Kind = "apps/v1", "Deployment"
			// No owner on a bare API server: the Revision it points at does not exist there.
			d.OwnerReferences = nil
			deployments = append(deployments, d)
			pod := &corev1.Pod{ObjectMeta: d.Spec.Template.ObjectMeta, Spec: d.Spec.Template.Spec}
			pod.APIVersion, pod.Kind = "v1", "Pod"
			pod.Name, pod.Namespace = d.Name+"-pod", d.Namespace
			pods = append(pods, pod)
			pa := revresources.MakePA(rev, d)
			pa.APIVersion, pa.Kind = "autoscaling.internal.knative.dev/v1alpha1", "PodAutoscaler"
			pa.OwnerReferences = nil
			if fe := pa.Validate(ctx); fe != nil {
				return fmt.Errorf("PodAutoscaler %s refused: %v", pa.Name, fe)
			}
			pas = append(pas, pa)
			fmt.Printf("  %s\n", summary(cfg, d, pa))
		}
	}
	if len(defaulted) == 0 {
		return fmt.Errorf("no serving.knative.dev/v1 Service in %v", paths)
	}
	for name, objs := range map[string][]any{"services": defaulted, "deployments": deployments, "pods": pods, "podautoscalers": pas} {
		if err := writeDocs(filepath.Join(dir, name+".yaml"), objs); err != nil {
			return err
		}
	}
	fmt.Printf("  rendered %d Deployments, Pods and PodAutoscalers into %s (%s)\n", len(deployments), dir, Caveat)
	return nil
}

func writeDocs(path string, objs []any) error {
	var b bytes.Buffer
	for _, o := range objs {
		y, err := yaml.Marshal(o)
		if err != nil {
			return err
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// knOnly are the annotations kn writes to record how it was called; nothing reads them.
var knOnly = map[string]bool{
	"client.knative.dev/user-image":                    true,
	"client.knative.dev/updateTimestamp":               true,
	"kubectl.kubernetes.io/last-applied-configuration": true,
	"serving.knative.dev/creator":                      true,
	"serving.knative.dev/lastModifier":                 true,
}

// comparable is what a Service asks for: name, labels, annotations, spec.
func comparable(svc *v1.Service) map[string]any {
	strip := func(m map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			if !knOnly[k] {
				out[k] = v
			}
		}
		return out
	}
	spec := svc.Spec.DeepCopy()
	spec.Template.Annotations = strip(spec.Template.Annotations)
	// kn writes `protocol: TCP` on the container port; Knative does not default it, but
	// Kubernetes does in every pod made of the template (SetDefaults_ContainerPort), so the two
	// ask for the same pod.
	for i := range spec.Template.Spec.Containers {
		for j := range spec.Template.Spec.Containers[i].Ports {
			if p := &spec.Template.Spec.Containers[i].Ports[j]; p.Protocol == "" {
				p.Protocol = corev1.ProtocolTCP
			}
		}
	}
	var s map[string]any
	j, _ := json.Marshal(spec)
	_ = json.Unmarshal(j, &s)
	return map[string]any{
		"name": svc.Namespace + "/" + svc.Name, "labels": strip(svc.Labels),
		"annotations": strip(svc.Annotations), "spec": s,
	}
}

func compare(cfg *revconfig.Config, a, b string) error {
	load := func(path string) (map[string]map[string]any, error) {
		svcs, err := services(path)
		if err != nil {
			return nil, err
		}
		out := map[string]map[string]any{}
		for _, svc := range svcs {
			// Status and server-set metadata are dropped by decoding into what comparable keeps.
			if err := admit(cfg, svc); err != nil {
				return nil, fmt.Errorf("%s: Service %s refused: %v", path, svc.Name, err)
			}
			out[svc.Namespace+"/"+svc.Name] = comparable(svc)
		}
		return out, nil
	}
	sa, err := load(a)
	if err != nil {
		return err
	}
	sb, err := load(b)
	if err != nil {
		return err
	}
	var problems []string
	names := map[string]bool{}
	for n := range sa {
		names[n] = true
	}
	for n := range sb {
		names[n] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	for _, n := range sorted {
		x, y := sa[n], sb[n]
		if x == nil || y == nil {
			problems = append(problems, fmt.Sprintf("Service %s is in only one of %s, %s", n, a, b))
			continue
		}
		for _, d := range diff("", x, y) {
			problems = append(problems, fmt.Sprintf("Service %s: %s", n, d))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s and %s differ after defaulting:\n  %s", a, b, strings.Join(problems, "\n  "))
	}
	if len(sorted) == 0 {
		return fmt.Errorf("no Service in %s or %s", a, b)
	}
	fmt.Printf("  %d Services equal after defaulting (%s)\n", len(sorted), Caveat)
	return nil
}

// diff lists the paths at which two JSON-shaped values differ, as "path: A ≠ B".
func diff(path string, a, b any) []string {
	ma, oka := a.(map[string]any)
	mb, okb := b.(map[string]any)
	if !oka {
		if m, ok := a.(map[string]string); ok {
			ma, oka = toAny(m), true
		}
	}
	if !okb {
		if m, ok := b.(map[string]string); ok {
			mb, okb = toAny(m), true
		}
	}
	if oka && okb {
		keys := map[string]bool{}
		for k := range ma {
			keys[k] = true
		}
		for k := range mb {
			keys[k] = true
		}
		var ks []string
		for k := range keys {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		var out []string
		for _, k := range ks {
			out = append(out, diff(path+"."+k, ma[k], mb[k])...)
		}
		return out
	}
	la, oka := a.([]any)
	lb, okb := b.([]any)
	if oka && okb && len(la) == len(lb) {
		var out []string
		for i := range la {
			out = append(out, diff(fmt.Sprintf("%s[%d]", path, i), la[i], lb[i])...)
		}
		return out
	}
	if reflect.DeepEqual(a, b) {
		return nil
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return []string{fmt.Sprintf("%s: %s ≠ %s", strings.TrimPrefix(path, "."), ja, jb)}
}

func toAny(m map[string]string) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// summary is what the autoscaler will do with a Service, as it reads the PodAutoscaler.
func summary(cfg *revconfig.Config, d *appsv1.Deployment, pa *autoscalingv1alpha1.PodAutoscaler) string {
	var containers []string
	for _, c := range d.Spec.Template.Spec.Containers {
		containers = append(containers, c.Name)
	}
	lo, hi := pa.ScaleBounds(cfg.Autoscaler)
	target, ok := pa.Target()
	if !ok {
		target = cfg.Autoscaler.ContainerConcurrencyTargetDefault
	}
	retention, _ := pa.ScaleToZeroPodRetention()
	return fmt.Sprintf("%s: Deployment %s (%s); PodAutoscaler %s: %s, metric %s, target %g, scale %d..%d, retention %s",
		pa.Labels["serving.knative.dev/service"], d.Name, strings.Join(containers, " + "), pa.Name,
		pa.Class(), pa.Metric(), target, lo, hi, retention)
}
