package debug

import "errors"

// errNotRegular marks an entry that is not a regular file.
var errNotRegular = errors.New("not a regular file")
