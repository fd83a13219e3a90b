package cpulimit

import (
	"testing"
	"testing/fstest"
)

// A host with cgroup v1 controllers mounted apart and the cgroup2 hierarchy
// beside them, as systemd's hybrid layout does.
const hybridMounts = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

func file(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }

func TestRead(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fs    fstest.MapFS
		cores float64
		ok    bool
	}{{
		name: "v1 quota on the process's own group",
		fs: fstest.MapFS{
			"proc/self/cgroup":    file("4:cpuset:/\n3:cpu,cpuacct:/bench/n1\n0::/\n"),
			"proc/self/mountinfo": file(hybridMounts),
			"sys/fs/cgroup/cpu,cpuacct/bench/n1/cpu.cfs_quota_us":  file("25000\n"),
			"sys/fs/cgroup/cpu,cpuacct/bench/n1/cpu.cfs_period_us": file("100000\n"),
			"sys/fs/cgroup/cpu,cpuacct/bench/cpu.cfs_quota_us":     file("-1\n"),
			"sys/fs/cgroup/cpu,cpuacct/bench/cpu.cfs_period_us":    file("100000\n"),
			"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us":           file("-1\n"),
			"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us":          file("100000\n"),
		},
		cores: 0.25, ok: true,
	}, {
		name: "v1 lower quota on an ancestor",
		fs: fstest.MapFS{
			"proc/self/cgroup":    file("3:cpu,cpuacct:/pods/p1/c1\n"),
			"proc/self/mountinfo": file(hybridMounts),
			"sys/fs/cgroup/cpu,cpuacct/pods/p1/c1/cpu.cfs_quota_us":  file("300000\n"),
			"sys/fs/cgroup/cpu,cpuacct/pods/p1/c1/cpu.cfs_period_us": file("100000\n"),
			"sys/fs/cgroup/cpu,cpuacct/pods/p1/cpu.cfs_quota_us":     file("50000\n"),
			"sys/fs/cgroup/cpu,cpuacct/pods/p1/cpu.cfs_period_us":    file("100000\n"),
		},
		cores: 0.5, ok: true,
	}, {
		name: "v1 without a quota",
		fs: fstest.MapFS{
			"proc/self/cgroup":                            file("3:cpu,cpuacct:/\n0::/\n"),
			"proc/self/mountinfo":                         file(hybridMounts),
			"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us":  file("-1\n"),
			"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": file("100000\n"),
		},
		ok: false,
	}, {
		name: "v2 only, in a container whose mount root is its own group",
		fs: fstest.MapFS{
			"proc/self/cgroup":              file("0::/\n"),
			"proc/self/mountinfo":           file("29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"),
			"sys/fs/cgroup/cpu.max":         file("150000 100000\n"),
			"sys/fs/cgroup/other/cpu.max":   file("10000 100000\n"),
			"sys/fs/cgroup/cpu.max.ignored": file("x"),
		},
		cores: 1.5, ok: true,
	}, {
		name: "v2 with a mount root above the process's group",
		fs: fstest.MapFS{
			"proc/self/cgroup":                        file("0::/kubepods/pod1/c1\n"),
			"proc/self/mountinfo":                     file("29 23 0:26 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"),
			"sys/fs/cgroup/pod1/c1/cpu.max":           file("max 100000\n"),
			"sys/fs/cgroup/pod1/cpu.max":              file("20000 100000\n"),
			"sys/fs/cgroup/cpu.max":                   file("max 100000\n"),
			"sys/fs/cgroup/pod1/c1/cpu.cfs_quota_us":  file("1000\n"),
			"sys/fs/cgroup/pod1/c1/cpu.cfs_period_us": file("100000\n"),
			"sys/fs/cgroup/pod1/c1/unrelated/cpu.max": file("1000 100000\n"),
		},
		cores: 0.2, ok: true,
	}, {
		name: "v2 with no limit anywhere",
		fs: fstest.MapFS{
			"proc/self/cgroup":        file("0::/a\n"),
			"proc/self/mountinfo":     file("29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"),
			"sys/fs/cgroup/a/cpu.max": file("max 100000\n"),
		},
		ok: false,
	}, {
		name: "no cgroup files",
		fs:   fstest.MapFS{},
		ok:   false,
	}, {
		name: "mount point with an escaped space",
		fs: fstest.MapFS{
			"proc/self/cgroup":           file("2:cpu:/g\n"),
			"proc/self/mountinfo":        file(`32 31 0:29 / /cg\040cpu rw - cgroup cgroup rw,cpu` + "\n"),
			"cg cpu/g/cpu.cfs_quota_us":  file("100000\n"),
			"cg cpu/g/cpu.cfs_period_us": file("100000\n"),
		},
		cores: 1, ok: true,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			cores, ok := read(tc.fs)
			if ok != tc.ok || cores != tc.cores {
				t.Fatalf("read = %v, %v; want %v, %v", cores, ok, tc.cores, tc.ok)
			}
		})
	}
}

func TestProcsFor(t *testing.T) {
	for _, tc := range []struct {
		cores     float64
		ok        bool
		procs     int
		wantProcs int
	}{
		{0.25, true, 2, 1},
		{1, true, 2, 1},
		{1.01, true, 2, 2},
		{3, true, 3, 3},
		{0, false, 8, 8},
	} {
		if got := ProcsFor(tc.cores, tc.ok, tc.procs); got != tc.wantProcs {
			t.Errorf("ProcsFor(%v, %v, %d) = %d, want %d", tc.cores, tc.ok, tc.procs, got, tc.wantProcs)
		}
	}
}
