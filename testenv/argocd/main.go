// Command argocd-driver reads Argo CD repository and repo-creds Secrets from a cluster with
// Argo CD's own code (github.com/argoproj/argo-cd/v3, pinned in go.mod: util/settings and
// util/db, as the API server and repo-server use them), so regcred's tests see exactly what
// Argo CD makes of the Secrets regcred writes.
//
//	argocd-driver resolve -namespace NS URL...
//	    For each URL, the repository Argo CD resolves for an Application whose repoURL it is:
//	    a repository Secret of that URL, its credentials completed from the longest matching
//	    repo-creds Secret (db.GetRepository). Prints a JSON array of
//	    {"url", "found", "inheritedCreds", "name", "type", "enableOCI", "username", "password"}.
//
//	argocd-driver pull -namespace NS -tls-dir DIR URL CHART VERSION
//	    Resolves URL as above, then pulls CHART at VERSION with Argo CD's Helm client
//	    (util/helm: `helm registry login` and `helm pull oci://...`, the `helm` on PATH), as the
//	    repo-server does for an Application; DIR holds a CA bundle per registry host, as
//	    argocd-tls-certs-cm provides it. Prints {"chart", "version", "files"} of the chart.
//
// The cluster is the one KUBECONFIG names.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/argoproj/argo-cd/v3/util/db"
	"github.com/argoproj/argo-cd/v3/util/helm"
	"github.com/argoproj/argo-cd/v3/util/settings"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

type resolved struct {
	URL            string `json:"url"`
	Found          bool   `json:"found"`
	InheritedCreds bool   `json:"inheritedCreds"`
	Name           string `json:"name"`
	Type           string `json:"type"`
	EnableOCI      bool   `json:"enableOCI"`
	Username       string `json:"username"`
	Password       string `json:"password"`
}

type pulled struct {
	Chart   string   `json:"chart"`
	Version string   `json:"version"`
	Files   []string `json:"files"`
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: argocd-driver resolve|pull -namespace NS ARGS...")
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	namespace := fs.String("namespace", "argocd", "Argo CD's namespace (where its repository Secrets live)")
	tlsDir := fs.String("tls-dir", "", "CA bundles by registry host name (ARGOCD_TLS_DATA_PATH)")
	_ = fs.Parse(os.Args[2:])
	if *tlsDir != "" {
		// Read by Argo CD's cert package when it looks for a host's CA bundle.
		_ = os.Setenv("ARGOCD_TLS_DATA_PATH", *tlsDir)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	config, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		fail("kubeconfig: %v", err)
	}
	clientset, err := kubernetes.NewForConfig(config)
	if err != nil {
		fail("client: %v", err)
	}
	argoDB := db.NewDB(*namespace, settings.NewSettingsManager(ctx, clientset, *namespace), clientset)
	resolve := func(url string) resolved {
		repo, err := argoDB.GetRepository(ctx, url, "")
		if err != nil {
			fail("resolve %s: %v", url, err)
		}
		exists, err := argoDB.RepositoryExists(ctx, url, "")
		if err != nil {
			fail("repository %s: %v", url, err)
		}
		return resolved{
			URL:            url,
			Found:          exists || repo.InheritedCreds,
			InheritedCreds: repo.InheritedCreds,
			Name:           repo.Name,
			Type:           repo.Type,
			EnableOCI:      repo.EnableOCI,
			Username:       repo.Username,
			Password:       repo.Password,
		}
	}
	switch mode {
	case "resolve":
		var out []resolved
		for _, url := range fs.Args() {
			out = append(out, resolve(url))
		}
		print(out)
	case "pull":
		if fs.NArg() != 3 {
			fail("usage: argocd-driver pull -namespace NS -tls-dir DIR URL CHART VERSION")
		}
		url, chart, version := fs.Arg(0), fs.Arg(1), fs.Arg(2)
		repo, err := argoDB.GetRepository(ctx, url, "")
		if err != nil {
			fail("resolve %s: %v", url, err)
		}
		client := helm.NewClient(repo.Repo, repo.GetHelmCreds(), repo.EnableOCI, repo.Proxy, repo.NoProxy)
		dir, closer, err := client.ExtractChart(chart, version, false, 10<<20, false)
		if err != nil {
			fail("pull %s %s %s: %v", url, chart, version, err)
		}
		defer func() { _ = closer.Close() }()
		var files []string
		_ = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
			if err == nil && !info.IsDir() {
				rel, _ := filepath.Rel(dir, path)
				files = append(files, rel)
			}
			return nil
		})
		sort.Strings(files)
		print(pulled{Chart: chart, Version: version, Files: files})
	default:
		fail("unknown mode %q (resolve or pull)", mode)
	}
}

func print(v any) {
	if err := json.NewEncoder(os.Stdout).Encode(v); err != nil {
		fail("write: %v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "argocd-driver: "+format+"\n", args...)
	os.Exit(1)
}
