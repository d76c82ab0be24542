// Command credprovider-driver drives an image credential provider plugin with the kubelet's
// own plugin manager (k8s.io/kubernetes/pkg/credentialprovider/plugin), so regcred's tests
// see exactly what a kubelet of the pinned release would do with its answers.
//
//	credprovider-driver lookup -config FILE -bin-dir DIR IMAGE...
//	    Registers the plugins of a CredentialProviderConfig as kubelet does (same validation,
//	    same exec, same strict decoding, same in-memory cache), then looks each image up in
//	    the external-provider keyring kubelet pulls with. Prints a JSON array, one element
//	    per image: {"image", "found", "auths": [{"username", "password", "serverAddress"}]}.
//	    Plugin errors are logged by kubelet's code (klog, stderr) and make "found" false.
//
//	credprovider-driver match -config FILE [-bin-dir DIR] HOST...
//	    For each host, which matchImages patterns of the config select the image HOST/a/b,
//	    by kubelet's own glob matcher (credentialprovider.URLsMatchStr). With -bin-dir the
//	    config is also registered (and so validated) as in lookup. Prints a JSON array of
//	    {"host", "image", "matchedBy": [...]}.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	kubeletconfigv1 "k8s.io/kubelet/config/v1"
	"k8s.io/kubernetes/pkg/credentialprovider"
	"k8s.io/kubernetes/pkg/credentialprovider/plugin"
	"sigs.k8s.io/yaml"
)

type auth struct {
	Username      string `json:"username"`
	Password      string `json:"password"`
	ServerAddress string `json:"serverAddress,omitempty"`
}

type lookupResult struct {
	Image string `json:"image"`
	Found bool   `json:"found"`
	Auths []auth `json:"auths"`
}

type matchResult struct {
	Host      string   `json:"host"`
	Image     string   `json:"image"`
	MatchedBy []string `json:"matchedBy"`
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: credprovider-driver lookup|match -config FILE [-bin-dir DIR] ARGS...")
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	config := fs.String("config", "", "CredentialProviderConfig file (kubelet's --image-credential-provider-config)")
	binDir := fs.String("bin-dir", "", "plugin directory (kubelet's --image-credential-provider-bin-dir)")
	_ = fs.Parse(os.Args[2:])
	if *config == "" {
		fail("-config is required")
	}
	switch mode {
	case "lookup":
		if *binDir == "" {
			fail("lookup needs -bin-dir")
		}
		register(*config, *binDir)
		printJSON(lookup(fs.Args()))
	case "match":
		if *binDir != "" {
			register(*config, *binDir)
		}
		printJSON(match(*config, fs.Args()))
	default:
		fail("unknown mode " + mode + " (lookup or match)")
	}
}

// register loads, validates and registers the config's plugins as kubelet does at start.
// No ServiceAccount token functions: the config does not ask for tokenAttributes.
func register(config, binDir string) {
	if err := plugin.RegisterCredentialProviderPlugins(config, binDir, nil, nil); err != nil {
		fail("register credential provider plugins: " + err.Error())
	}
}

// lookup asks the keyring kubelet builds for a pod's image pull (no pod or ServiceAccount).
func lookup(images []string) []lookupResult {
	keyring := plugin.NewExternalCredentialProviderDockerKeyring("", "", "", "")
	results := make([]lookupResult, 0, len(images))
	for _, image := range images {
		tracked, found := keyring.Lookup(image)
		r := lookupResult{Image: image, Found: found, Auths: []auth{}}
		for _, t := range tracked {
			r.Auths = append(r.Auths, auth{Username: t.Username, Password: t.Password, ServerAddress: t.ServerAddress})
		}
		results = append(results, r)
	}
	return results
}

func match(config string, hosts []string) []matchResult {
	data, err := os.ReadFile(config)
	if err != nil {
		fail(err.Error())
	}
	var cfg kubeletconfigv1.CredentialProviderConfig
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		fail("decode " + config + ": " + err.Error())
	}
	results := make([]matchResult, 0, len(hosts))
	for _, host := range hosts {
		image := host + "/team/app"
		r := matchResult{Host: host, Image: image, MatchedBy: []string{}}
		for _, p := range cfg.Providers {
			for _, pattern := range p.MatchImages {
				ok, err := credentialprovider.URLsMatchStr(pattern, image)
				if err != nil {
					fail(fmt.Sprintf("pattern %q: %v", pattern, err))
				}
				if ok {
					r.MatchedBy = append(r.MatchedBy, pattern)
				}
			}
		}
		results = append(results, r)
	}
	return results
}

func printJSON(v any) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fail(err.Error())
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "credprovider-driver: "+msg)
	os.Exit(2)
}
