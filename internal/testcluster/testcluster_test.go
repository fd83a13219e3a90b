package testcluster

import (
	"fmt"
	"net"
	"testing"
)

// TestFreePort: the port is free and, where the kernel's ephemeral range
// leaves room below it, outside that range.
func TestFreePort(t *testing.T) {
	low := ephemeralLow()
	for range 20 {
		port := FreePort(t)
		if low-minPickedPort > 1000 && (port < minPickedPort || port >= low) {
			t.Fatalf("port %d: want one in [%d, %d), below the ephemeral range", port, minPickedPort, low)
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatalf("port %d is not free: %v", port, err)
		}
		_ = ln.Close()
	}
}
