package meshtrust_test

import (
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// meshdPodSpec returns the StatefulSet's pod spec and its meshd container.
func meshdPodSpec(t *testing.T, objs []*unstructured.Unstructured) (pod, meshd map[string]any, replicas int64) {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() != "StatefulSet" {
			continue
		}
		switch n := o.Object["spec"].(map[string]any)["replicas"].(type) {
		case int64:
			replicas = n
		case float64:
			replicas = int64(n)
		}
		pod, _, _ = unstructured.NestedMap(o.Object, "spec", "template", "spec")
		for _, c := range pod["containers"].([]any) {
			if c := c.(map[string]any); c["name"] == "meshd" {
				return pod, c, replicas
			}
		}
	}
	t.Fatal("no StatefulSet with a meshd container rendered")
	return nil, nil, 0
}

// excludesAgents reports whether a rendered label selector selects meshd's
// pods and not the agent's, which carry the chart's selector labels too.
func excludesAgents(sel map[string]any) bool {
	ml, _ := sel["matchLabels"].(map[string]any)
	if ml["app.kubernetes.io/name"] != "meshtrust" || ml["app.kubernetes.io/instance"] == nil {
		return false
	}
	exprs, _ := sel["matchExpressions"].([]any)
	for _, e := range exprs {
		e := e.(map[string]any)
		if e["key"] == "app.kubernetes.io/component" && e["operator"] == "NotIn" && slices.Equal(e["values"].([]any), []any{"agent"}) {
			return true
		}
	}
	return false
}

// TestReplicasShape: every values combination with more than one replica
// has a PodDisruptionBudget and anti-affinity over meshd's pods alone,
// reads the database URL from a Secret, and mounts the CA material where
// its flags say, read-only, as whole directories (a subPath never sees a
// Secret's update); a single replica has none of it.
func TestReplicasShape(t *testing.T) {
	multi := 0
	for _, f := range valueFiles(t) {
		t.Run(comboName(f), func(t *testing.T) {
			objs := render(t, "mesh", f)
			pod, c, replicas := meshdPodSpec(t, objs)
			var pdbs []*unstructured.Unstructured
			for _, o := range objs {
				if o.GetKind() == "PodDisruptionBudget" {
					pdbs = append(pdbs, o)
				}
			}
			if replicas <= 1 {
				if len(pdbs) != 0 || pod["affinity"] != nil {
					t.Errorf("one replica renders %d PodDisruptionBudgets and affinity %v; want neither", len(pdbs), pod["affinity"])
				}
			} else {
				multi++
				if len(pdbs) != 1 {
					t.Fatalf("%d replicas render %d PodDisruptionBudgets, want 1", replicas, len(pdbs))
				}
				sel, _, _ := unstructured.NestedMap(pdbs[0].Object, "spec", "selector")
				if !excludesAgents(sel) {
					t.Errorf("the PodDisruptionBudget selects %v; want meshd's pods, not the agent's", sel)
				}
				anti, _, _ := unstructured.NestedMap(pod, "affinity", "podAntiAffinity")
				var term map[string]any
				if req, ok := anti["requiredDuringSchedulingIgnoredDuringExecution"].([]any); ok && len(req) == 1 {
					term = req[0].(map[string]any)
				} else if pref, ok := anti["preferredDuringSchedulingIgnoredDuringExecution"].([]any); ok && len(pref) == 1 {
					term, _ = pref[0].(map[string]any)["podAffinityTerm"].(map[string]any)
				}
				if sel, _ := term["labelSelector"].(map[string]any); term["topologyKey"] == nil || !excludesAgents(sel) {
					t.Errorf("%d replicas: pod anti-affinity %v; want one term over meshd's pods", replicas, anti)
				}
				var db map[string]any
				for _, e := range c["env"].([]any) {
					if e := e.(map[string]any); e["name"] == "DATABASE_URL" {
						db = e
					}
				}
				if db == nil || db["value"] != nil || db["valueFrom"] == nil {
					t.Errorf("%d replicas: DATABASE_URL %v; want it from a Secret (valueFrom), never a value", replicas, db)
				}
			}

			args := map[string]string{}
			for _, a := range c["args"].([]any) {
				k, v, _ := strings.Cut(a.(string), "=")
				args[k] = v
			}
			mounts := map[string]map[string]any{} // by mount path
			for _, m := range c["volumeMounts"].([]any) {
				m := m.(map[string]any)
				mounts[m["mountPath"].(string)] = m
			}
			volumes := map[string]map[string]any{}
			for _, v := range pod["volumes"].([]any) {
				v := v.(map[string]any)
				volumes[v["name"].(string)] = v
			}
			// secretDir checks that dir is a read-only mount of a whole
			// Secret volume holding the files named, and returns the volume.
			secretDir := func(flag, dir string, files ...string) {
				m := mounts[dir]
				if m == nil || m["readOnly"] != true || m["subPath"] != nil {
					t.Errorf("%s: %s is mounted as %v; want a read-only mount of the whole directory", flag, dir, m)
					return
				}
				sec, _ := volumes[m["name"].(string)]["secret"].(map[string]any)
				var paths []string
				for _, it := range sec["items"].([]any) {
					paths = append(paths, it.(map[string]any)["path"].(string))
				}
				slices.Sort(paths)
				if sec["secretName"] == nil || !slices.Equal(paths, files) {
					t.Errorf("%s: %s holds Secret %v with %v; want %v", flag, dir, sec["secretName"], paths, files)
				}
			}
			if dir, ok := args["--ca-from-secret"]; ok {
				secretDir("--ca-from-secret", dir, "ca.crt", "tls.crt", "tls.key")
			}
			if pin, ok := args["--pkcs11-pin-file"]; ok {
				secretDir("--pkcs11-pin-file", pin[:strings.LastIndex(pin, "/")], strings.TrimPrefix(pin[strings.LastIndex(pin, "/"):], "/"))
				if args["--pkcs11-module"] == "" || args["--pkcs11-token"] == "" {
					t.Errorf("PKCS#11 args %v; want --pkcs11-module and --pkcs11-token with the PIN file", args)
				}
			}
		})
	}
	if multi < 2 {
		t.Errorf("%d values combinations run several replicas; want the secret and the pkcs11 ones at least", multi)
	}
}
