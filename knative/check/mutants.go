package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	v1 "knative.dev/serving/pkg/apis/serving/v1"
	revconfig "knative.dev/serving/pkg/reconciler/revision/config"
)

// mutant is a broken variant of a valid Service that the Service CRD's schema accepts (it keeps
// unknown fields in the pod template and does not check annotation values) but Knative's
// webhook refuses.
type mutant struct {
	name   string
	change func(svc, template, container map[string]any)
}

func annotate(key, value string) func(_, template, _ map[string]any) {
	return func(_, template, _ map[string]any) {
		meta := child(template, "metadata")
		child(meta, "annotations")[key] = value
	}
}

// mutantList: pod fields Knative allows only behind a feature flag (off by default) or never,
// autoscaling annotations with invalid values, ports and env Knative keeps for itself, and
// RevisionSpec values over the defaults' limits.
var mutantList = []mutant{
	{"nodeSelector (flag kubernetes.podspec-nodeselector)", func(_, t, _ map[string]any) {
		child(t, "spec")["nodeSelector"] = map[string]any{"disktype": "ssd"}
	}},
	{"tolerations (flag kubernetes.podspec-tolerations)", func(_, t, _ map[string]any) {
		child(t, "spec")["tolerations"] = []any{map[string]any{"key": "k", "operator": "Exists"}}
	}},
	{"hostNetwork", func(_, t, _ map[string]any) { child(t, "spec")["hostNetwork"] = true }},
	{"a privileged container", func(_, _, c map[string]any) { child(c, "securityContext")["privileged"] = true }},
	{"an added capability (flag kubernetes.containerspec-addcapabilities)", func(_, _, c map[string]any) {
		child(child(c, "securityContext"), "capabilities")["add"] = []any{"NET_ADMIN"}
	}},
	{"min-scale -1", annotate("autoscaling.knative.dev/min-scale", "-1")},
	{"min-scale above max-scale", func(s, t, c map[string]any) {
		annotate("autoscaling.knative.dev/min-scale", "20")(s, t, c)
		annotate("autoscaling.knative.dev/max-scale", "10")(s, t, c)
	}},
	{"scale-to-zero-pod-retention-period thirty", annotate("autoscaling.knative.dev/scale-to-zero-pod-retention-period", "thirty")},
	{"target 0", annotate("autoscaling.knative.dev/target", "0")},
	{"metric cpu with the default (KPA) class", annotate("autoscaling.knative.dev/metric", "cpu")},
	{"window 1s", annotate("autoscaling.knative.dev/window", "1s")},
	{"reserved port 8012 (queue-proxy's)", func(_, _, c map[string]any) {
		c["ports"] = []any{map[string]any{"name": "http1", "containerPort": 8012}}
	}},
	{"a second container port", func(_, _, c map[string]any) {
		ports, _ := c["ports"].([]any)
		c["ports"] = append(ports, map[string]any{"name": "metrics", "containerPort": 9000})
	}},
	{"reserved env K_SERVICE", func(_, _, c map[string]any) {
		env, _ := c["env"].([]any)
		c["env"] = append(env, map[string]any{"name": "K_SERVICE", "value": "x"})
	}},
	{"timeoutSeconds 3600 (over max-revision-timeout-seconds 600)", func(_, t, _ map[string]any) {
		child(t, "spec")["timeoutSeconds"] = 3600
	}},
	{"containerConcurrency 2000 (over container-concurrency-max-limit 1000)", func(_, t, _ map[string]any) {
		child(t, "spec")["containerConcurrency"] = 2000
	}},
	{"a second container, both with a port", func(_, t, c map[string]any) {
		spec := child(t, "spec")
		containers, _ := spec["containers"].([]any)
		second := map[string]any{"name": "sidecar", "image": c["image"], "ports": c["ports"]}
		spec["containers"] = append(containers, second)
	}},
}

func child(m map[string]any, key string) map[string]any {
	c, ok := m[key].(map[string]any)
	if !ok {
		c = map[string]any{}
		m[key] = c
	}
	return c
}

// mutants refuses to pass unless the first Service of path is admitted and every mutant of it
// is refused; it prints Knative's message for each.
func mutants(cfg *revconfig.Config, path string) error {
	svcs, err := services(path)
	if err != nil {
		return err
	}
	if len(svcs) == 0 {
		return fmt.Errorf("no Service in %s", path)
	}
	original, err := json.Marshal(svcs[0])
	if err != nil {
		return err
	}
	if err := admit(cfg, svcs[0].DeepCopy()); err != nil {
		return fmt.Errorf("the unbroken Service %s is refused already: %v", svcs[0].Name, err)
	}
	var accepted []string
	for _, m := range mutantList {
		var doc map[string]any
		_ = json.Unmarshal(original, &doc)
		template := child(child(doc, "spec"), "template")
		containers, _ := child(template, "spec")["containers"].([]any)
		if len(containers) == 0 {
			return fmt.Errorf("Service %s has no container", svcs[0].Name)
		}
		m.change(doc, template, containers[0].(map[string]any))
		j, _ := json.Marshal(doc)
		svc := &v1.Service{}
		if err := json.Unmarshal(j, svc); err != nil {
			return fmt.Errorf("mutant %q does not decode: %v", m.name, err)
		}
		if err := admit(cfg, svc); err != nil {
			msg := err.Error()
			if len(msg) > 160 {
				msg = msg[:157] + "..."
			}
			fmt.Printf("  %s: refused — %s\n", m.name, msg)
			continue
		}
		accepted = append(accepted, m.name)
	}
	if len(accepted) > 0 {
		return errors.New("broken variants admitted: " + strings.Join(accepted, ", "))
	}
	fmt.Printf("  %d broken variants of Service %s refused (%s)\n", len(mutantList), svcs[0].Name, Caveat)
	return nil
}
