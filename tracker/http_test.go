package tracker_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/tracker"
)

func handlerOnly(t *testing.T) http.Handler {
	t.Helper()
	tr, err := tracker.New(tracker.Config{InstanceID: "e1", Fleets: []fleets.Fleet{{Name: "chat"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tr.Handler(nil)
}

// TestErrorsEchoLittleOfTheInput: a 3 KB fleet name or field name is not
// sent back whole.
func TestErrorsEchoLittleOfTheInput(t *testing.T) {
	h := handlerOnly(t)
	long := strings.Repeat("x", 3<<10)
	for _, body := range []string{
		fmt.Sprintf(`{"fleet": %q}`, long),
		fmt.Sprintf(`{"fleet": "chat", %q: 1}`, long),
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/admit", strings.NewReader(body)))
		if rec.Code != http.StatusBadRequest {
			t.Errorf("status %d, want 400", rec.Code)
		}
		if n := rec.Body.Len(); n > 256 {
			t.Errorf("error body of %d bytes echoes the input: %.80s...", n, rec.Body.String())
		}
		if !strings.Contains(rec.Body.String(), "bytes)") {
			t.Errorf("error %q does not say how long the input was", rec.Body.String())
		}
	}
}

// serve runs h with limits l on a loopback listener.
