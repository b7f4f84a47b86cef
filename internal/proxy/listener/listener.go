// Package listener accepts the sidecar's connections: explicit listeners
// bound to a port, and the capture listeners (15001 outbound, 15006
// inbound) that find each connection's original destination.
package listener
