package kubernetes

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// TestDeployManifests decodes deploy/kubernetes/tessera.yaml strictly into
// Kubernetes' API types (an unknown or misspelt field fails) and checks
// what the deployment relies on: a headless Service publishing pods before
// they are ready, a StatefulSet over it with probes on /readyz and /livez,
// anti-affinity, a user without privileges and a volume for the data, a
// PodDisruptionBudget over the same pods; and the pods' start script gives
// the first three --initial-cluster and later ones --join.
func TestDeployManifests(t *testing.T) {
	raw, err := os.ReadFile("../../deploy/kubernetes/tessera.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var (
		services []corev1.Service
		sts      *appsv1.StatefulSet
		pdb      *policyv1.PodDisruptionBudget
	)
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var head struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatal(err)
		}
		var obj any
		switch head.Kind {
		case "Service":
			services = append(services, corev1.Service{})
			obj = &services[len(services)-1]
		case "StatefulSet":
			sts = &appsv1.StatefulSet{}
			obj = sts
		case "PodDisruptionBudget":
			pdb = &policyv1.PodDisruptionBudget{}
			obj = pdb
		default:
			t.Fatalf("unexpected kind %q", head.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s: %v", head.Kind, err)
		}
	}
	if sts == nil || pdb == nil || len(services) != 2 {
		t.Fatalf("want 2 Services, a StatefulSet and a PodDisruptionBudget; got %d, %v, %v", len(services), sts != nil, pdb != nil)
	}
	labels := sts.Spec.Template.Labels
	for k, v := range sts.Spec.Selector.MatchLabels {
		if labels[k] != v {
			t.Errorf("the StatefulSet's selector %s=%s does not match its pods", k, v)
		}
	}
	for k, v := range pdb.Spec.Selector.MatchLabels {
		if labels[k] != v {
			t.Errorf("the PodDisruptionBudget's selector %s=%s does not match the pods", k, v)
		}
	}
	var headless *corev1.Service
	for i := range services {
		if services[i].Spec.ClusterIP == corev1.ClusterIPNone {
			headless = &services[i]
		}
	}
	if headless == nil || headless.Name != sts.Spec.ServiceName || !headless.Spec.PublishNotReadyAddresses {
		t.Fatalf("want a headless Service named %q publishing pods that are not ready", sts.Spec.ServiceName)
	}
	pod := sts.Spec.Template.Spec
	if pod.Affinity == nil || pod.Affinity.PodAntiAffinity == nil || len(pod.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Error("pods have no anti-affinity")
	}
	if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
		t.Error("pods may run as root")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Containers))
	}
	c := pod.Containers[0]
	for probe, path := range map[*corev1.Probe]string{c.ReadinessProbe: "/readyz", c.LivenessProbe: "/livez", c.StartupProbe: "/livez"} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != path {
			t.Errorf("want a probe on %s", path)
		}
	}
	if len(sts.Spec.VolumeClaimTemplates) != 1 || len(c.VolumeMounts) != 1 || c.VolumeMounts[0].Name != sts.Spec.VolumeClaimTemplates[0].Name {
		t.Error("the data directory is not on the StatefulSet's volume")
	}

	// The start script, with tessera replaced by echo.
	if len(c.Command) != 2 || len(c.Args) != 1 {
		t.Fatalf("want a shell command and its script, got %q %q", c.Command, c.Args)
	}
	script := strings.ReplaceAll(c.Args[0], "exec /usr/local/bin/tessera", "echo")
	for pod, want := range map[string]string{
		"tessera-0": "--initial-cluster tessera-0=http://tessera-0.tessera-peer.ns.svc:2380,tessera-1=http://tessera-1.tessera-peer.ns.svc:2380,tessera-2=http://tessera-2.tessera-peer.ns.svc:2380",
		"tessera-2": "--initial-cluster ",
		"tessera-3": "--join http://tessera-0.tessera-peer.ns.svc:2379,",
	} {
		cmd := exec.Command("/bin/sh", "-ec", script)
		cmd.Env = []string{"POD_NAME=" + pod, "POD_NAMESPACE=ns"}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("start script for %s: %v\n%s", pod, err, out.String())
		}
		got := out.String()
		if !strings.Contains(got, want) || !strings.Contains(got, "--name "+pod+" ") || !strings.Contains(got, "--initial-advertise-peer-urls http://"+pod+".tessera-peer.ns.svc:2380") {
			t.Errorf("start script for %s runs: %s\nwant it to contain %q", pod, got, want)
		}
	}
}
