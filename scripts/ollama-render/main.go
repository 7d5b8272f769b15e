// Renders an ollama Modelfile's TEMPLATE for a chat, as ollama does for a
// Messages-style template: the Modelfile's SYSTEM first when the chat has no
// system message (ollama's chat handler), then collate (system messages joined
// into .System, consecutive same-role messages merged), then execute with
// System and Messages. Usage: render MODELFILE '[{"Role":..,"Content":..}]'.
// Used by scripts/interop-ollama.sh.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

func main() {
	mf, _ := os.ReadFile(os.Args[1])
	s := string(mf)
	i := strings.Index(s, "TEMPLATE \"\"\"")
	rest := s[i+len("TEMPLATE \"\"\""):]
	tmpl := rest[:strings.Index(rest, "\"\"\"")]
	var msgs []Message
	json.Unmarshal([]byte(os.Args[2]), &msgs)
	// ollama's chat handler: the Modelfile's SYSTEM when the request has none.
	if j := strings.Index(s, "\nSYSTEM \""); j >= 0 && (len(msgs) == 0 || msgs[0].Role != "system") {
		line := s[j+len("\nSYSTEM \""):]
		line = line[:strings.Index(line, "\"\n")]
		msgs = append([]Message{{Role: "system", Content: strings.ReplaceAll(line, "\\\"", "\"")}}, msgs...)
	}
	var system []string
	var coll []*Message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(coll) > 0 && coll[len(coll)-1].Role == m.Role {
			coll[len(coll)-1].Content += "\n\n" + m.Content
		} else {
			coll = append(coll, &m)
		}
	}
	t := template.Must(template.New("").Parse(tmpl))
	var b strings.Builder
	if err := t.Execute(&b, map[string]any{"System": strings.Join(system, "\n\n"), "Messages": coll}); err != nil {
		panic(err)
	}
	fmt.Print(b.String())
}
