//go:build !linux

package credstore

// Rotate is Linux-only; see rotate_linux.go.
func (s *Store) Rotate([]Entry) (Rotation, error) { return Rotation{}, errUnsupported() }
