// Package cpulimit reads the CPU bandwidth limit of the cgroup a process
// runs in (cgroup v1's cpu.cfs_quota_us and cpu.cfs_period_us, or v2's
// cpu.max), as the Go runtime does to choose GOMAXPROCS.
//
// The runtime never goes below two Ps for a limit under two cores. A node
// capped at a fraction of one core then runs two Ps on a quota that one
// thread could use up: goroutines handed between threads wake them with
// futex calls, and an idle P spins looking for work, all out of the
// node's quota. ProcsFor gives the count a node uses instead.
package cpulimit

import (
	"bufio"
	"bytes"
	"io/fs"
	"math"
	"os"
	"path"
	"strconv"
	"strings"
)

// Read returns this process's cgroup CPU limit in cores: quota ÷ period of
// its cgroup or the lowest of its ancestors' in the same hierarchy. ok is
// false when there is no limit or it cannot be read.
func Read() (cores float64, ok bool) {
	return read(os.DirFS("/"))
}

// ProcsFor returns the GOMAXPROCS a process whose cgroup limit is cores
// (ok false: none) should run with, given the runtime's own choice procs:
// one for a limit of at most one core, otherwise procs.
func ProcsFor(cores float64, ok bool, procs int) int {
	if ok && cores > 0 && cores <= 1 {
		return 1
	}
	return procs
}

// read is Read on the filesystem root.
func read(root fs.FS) (float64, bool) {
	cgroups, err := fs.ReadFile(root, "proc/self/cgroup")
	if err != nil {
		return 0, false
	}
	mounts, err := fs.ReadFile(root, "proc/self/mountinfo")
	if err != nil {
		return 0, false
	}
	v1Path, v1 := cgroupPath(cgroups, true)
	v2Path, v2 := cgroupPath(cgroups, false)
	for _, m := range cgroupMounts(mounts) {
		switch {
		case m.v2 && v2:
			if cores, ok := lowestLimit(root, m, v2Path, v2Limit); ok {
				return cores, true
			}
		case !m.v2 && v1:
			if cores, ok := lowestLimit(root, m, v1Path, v1Limit); ok {
				return cores, true
			}
		}
	}
	return 0, false
}

// cgroupPath finds in /proc/self/cgroup the process's path in the v1
// hierarchy holding the cpu controller (v1 true) or in the v2 hierarchy.
func cgroupPath(data []byte, v1 bool) (string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if !v1 && parts[0] == "0" && parts[1] == "" {
			return parts[2], true
		}
		if v1 && hasItem(parts[1], "cpu") {
			return parts[2], true
		}
	}
	return "", false
}

// mount is a cgroup filesystem mounted at point, showing the hierarchy from
// root down.
type mount struct {
	root, point string
	v2          bool
}

// cgroupMounts lists the cgroup v1 mounts with the cpu controller and the
// cgroup2 mounts in /proc/self/mountinfo, v1 first.
func cgroupMounts(data []byte) []mount {
	var v1s, v2s []mount
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// ID parent major:minor root mount-point options [optional...] - fstype source super-options
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, after := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(after) < 1 {
			continue
		}
		m := mount{root: unescape(fields[3]), point: unescape(fields[4])}
		switch {
		case after[0] == "cgroup2":
			m.v2 = true
			v2s = append(v2s, m)
		case after[0] == "cgroup" && len(after) >= 3 && hasItem(after[2], "cpu"):
			v1s = append(v1s, m)
		}
	}
	return append(v1s, v2s...)
}

// lowestLimit walks from the process's cgroup directory under m up to m's
// mount point and returns the lowest limit limitOf finds.
func lowestLimit(root fs.FS, m mount, cgPath string, limitOf func(fs.FS, string) (float64, bool)) (float64, bool) {
	rel := cgPath
	if m.root != "/" {
		if cgPath != m.root && !strings.HasPrefix(cgPath, m.root+"/") {
			return 0, false // this mount does not show the process's cgroup
		}
		rel = strings.TrimPrefix(cgPath, m.root)
	}
	top := strings.TrimPrefix(path.Clean(m.point), "/")
	dir := path.Join(top, rel)
	lowest, found := math.Inf(1), false
	for {
		if cores, ok := limitOf(root, dir); ok && cores < lowest {
			lowest, found = cores, true
		}
		if dir == top || dir == "." || dir == "/" {
			break
		}
		dir = path.Dir(dir)
	}
	return lowest, found
}

// v1Limit reads cpu.cfs_quota_us ÷ cpu.cfs_period_us in dir (a quota of -1:
// no limit).
func v1Limit(root fs.FS, dir string) (float64, bool) {
	quota, ok := readInt(root, path.Join(dir, "cpu.cfs_quota_us"))
	if !ok || quota <= 0 {
		return 0, false
	}
	period, ok := readInt(root, path.Join(dir, "cpu.cfs_period_us"))
	if !ok || period <= 0 {
		return 0, false
	}
	return float64(quota) / float64(period), true
}

// v2Limit reads cpu.max in dir: "QUOTA PERIOD", or "max PERIOD" for none.
func v2Limit(root fs.FS, dir string) (float64, bool) {
	data, err := fs.ReadFile(root, path.Join(dir, "cpu.max"))
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(data))
	if len(f) != 2 || f[0] == "max" {
		return 0, false
	}
	quota, err1 := strconv.ParseInt(f[0], 10, 64)
	period, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil || quota <= 0 || period <= 0 {
		return 0, false
	}
	return float64(quota) / float64(period), true
}

func readInt(root fs.FS, name string) (int64, bool) {
	data, err := fs.ReadFile(root, name)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	return n, err == nil
}

// hasItem reports whether the comma-separated list holds item.
func hasItem(list, item string) bool {
	for _, s := range strings.Split(list, ",") {
		if s == item {
			return true
		}
	}
	return false
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
