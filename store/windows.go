package store

import "time"

// Rejections are counted in fixed buckets of BucketWidth; a fleet keeps
// BucketSlots of them (one hour), so its memory does not grow with the
// rejection rate and a window is summed in O(buckets).
const (
	BucketWidth = 15 * time.Second
	BucketSlots = int64(time.Hour / BucketWidth)
)

// The windows the scaler and the CLI report.
const (
	Window5m  = 5 * time.Minute
	Window15m = 15 * time.Minute
	Window1h  = time.Hour
)

// Bucket is the index of the rejection bucket t falls in.
func Bucket(t time.Time) int64 { return t.UnixMilli() / BucketWidth.Milliseconds() }

func windowBuckets(w time.Duration) int64 { return int64(w / BucketWidth) }

// Windows holds a rejection count over the last 5 min, 15 min and 1 h. The
// current bucket is included, so a window covers between w-BucketWidth and w.
type Windows struct {
	M5  int64 `json:"5m"`
	M15 int64 `json:"15m"`
	H1  int64 `json:"1h"`
}
