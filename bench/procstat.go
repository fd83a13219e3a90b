package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ServerStats is what /proc said about the server processes (--server-pids)
// during the measured part of a run. RSS figures are sums over the processes.
type ServerStats struct {
	PIDs                     []int   `json:"pids"`
	CPUSeconds               float64 `json:"cpu_seconds"`
	CPUSecondsPer10kRequests float64 `json:"cpu_seconds_per_10k_requests"`
	RSSStartBytes            int64   `json:"rss_start_bytes"`
	RSSEndBytes              int64   `json:"rss_end_bytes"`
	RSSPeakBytes             int64   `json:"rss_peak_bytes"`
}

// userHZ is the unit of /proc/PID/stat times; Linux fixes it at 100 for
// user space whatever the kernel's tick.
const userHZ = 100

// readCPUSeconds returns user+system CPU time of a process.
func readCPUSeconds(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPUSeconds(data)
}

// parseStatCPUSeconds reads utime and stime (fields 14 and 15) from a
// /proc/PID/stat line. The command name (field 2) may hold spaces and
// parentheses, so fields are counted from the last ')'.
func parseStatCPUSeconds(stat []byte) (float64, error) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, fmt.Errorf("malformed stat line")
	}
	fields := strings.Fields(string(stat[end+1:]))
	// fields[0] is field 3 (state); utime is field 14.
	if len(fields) < 13 {
		return 0, fmt.Errorf("stat line has %d fields after the command", len(fields))
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed utime/stime %q %q", fields[11], fields[12])
	}
	return float64(utime+stime) / userHZ, nil
}

// readRSSBytes returns a process's VmRSS.
func readRSSBytes(pid int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseStatusRSSBytes(data)
}

func parseStatusRSSBytes(status []byte) (int64, error) {
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("malformed VmRSS line %q", line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS line")
}

// procSampler watches server processes: CPU time at start and end, and the
// summed RSS every sampleEvery, keeping the peak.
type procSampler struct {
	pids        []int
	cpuStart    float64
	rssStart    int64
	sampleEvery time.Duration
	stop        chan struct{}
	done        chan struct{}

	mu      sync.Mutex
	rssPeak int64 // guarded by mu; peak of summed RSS since the last resetPeak
}

func startProcSampler(pids []int) (*procSampler, error) {
	s := &procSampler{pids: pids, sampleEvery: 20 * time.Millisecond, stop: make(chan struct{}), done: make(chan struct{})}
	var err error
	if s.cpuStart, err = s.cpuSeconds(); err != nil {
		return nil, err
	}
	if s.rssStart, err = s.rss(); err != nil {
		return nil, err
	}
	s.rssPeak = s.rssStart
	go s.loop()
	return s, nil
}

func (s *procSampler) cpuSeconds() (float64, error) {
	var sum float64
	for _, pid := range s.pids {
		c, err := readCPUSeconds(pid)
		if err != nil {
			return 0, fmt.Errorf("--server-pids: %w", err)
		}
		sum += c
	}
	return sum, nil
}

func (s *procSampler) rss() (int64, error) {
	var sum int64
	for _, pid := range s.pids {
		r, err := readRSSBytes(pid)
		if err != nil {
			return 0, fmt.Errorf("--server-pids: %w", err)
		}
		sum += r
	}
	return sum, nil
}

func (s *procSampler) loop() {
	defer close(s.done)
	t := time.NewTicker(s.sampleEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.sample()
		}
	}
}

// sample takes one RSS reading and returns it.
func (s *procSampler) sample() int64 {
	r, err := s.rss()
	if err != nil {
		return 0 // the process went away; the final reading reports it
	}
	s.mu.Lock()
	s.rssPeak = max(s.rssPeak, r)
	s.mu.Unlock()
	return r
}

// resetPeak starts a new peak window at the current RSS, which it returns.
func (s *procSampler) resetPeak() int64 {
	r, _ := s.rss()
	s.mu.Lock()
	s.rssPeak = r
	s.mu.Unlock()
	return r
}

func (s *procSampler) peak() int64 {
	s.sample()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rssPeak
}

// finish stops sampling and reports, dividing CPU time by requests.
func (s *procSampler) finish(requests int64) (*ServerStats, error) {
	close(s.stop)
	<-s.done
	cpu, err := s.cpuSeconds()
	if err != nil {
		return nil, err
	}
	rss := s.sample()
	st := &ServerStats{
		PIDs:          s.pids,
		CPUSeconds:    cpu - s.cpuStart,
		RSSStartBytes: s.rssStart,
		RSSEndBytes:   rss,
		RSSPeakBytes:  s.peak(),
	}
	if requests > 0 {
		st.CPUSecondsPer10kRequests = st.CPUSeconds / float64(requests) * 10000
	}
	return st, nil
}
