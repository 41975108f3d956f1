// kstatus-check prints what sigs.k8s.io/cli-utils/pkg/kstatus (the library Flux, Argo CD's
// kstatus mode and kpt use) computes for each object: it reads a JSON list of objects on stdin and
// writes one JSON line per object: {"name": ..., "status": ..., "message": ...}.
//
// The tests feed it live OpsConductor objects in every phase (tests/e2e/test_gitops_health.py).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	var objects []interface{}
	if err == nil {
		// Kubernetes' JSON decoding: integers become int64, as the API machinery expects.
		err = utiljson.Unmarshal(data, &objects)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kstatus-check: reading objects: %v\n", err)
		os.Exit(2)
	}
	encoder := json.NewEncoder(os.Stdout)
	for _, object := range objects {
		u := &unstructured.Unstructured{Object: object.(map[string]interface{})}
		computed, err := status.Compute(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus-check: %s: %v\n", u.GetName(), err)
			os.Exit(1)
		}
		if err := encoder.Encode(result{u.GetName(), computed.Status.String(), computed.Message}); err != nil {
			os.Exit(1)
		}
	}
}
