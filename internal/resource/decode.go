package resource

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"sigs.k8s.io/yaml"
)

// Document is one object from a multi-document YAML or JSON stream.
type Document struct {
	// Index is the document's position in the stream, from 1.
	Index int
	// Line is the line the document starts on, from 1.
	Line int
	// Object is the decoded object; nil for an empty document.
	Object map[string]any
}

// Position says where the document sits in source, for error messages.
func (d Document) Position(source string) string {
	return fmt.Sprintf("%s: document %d (line %d)", source, d.Index, d.Line)
}

// SplitYAML decodes a stream of YAML (or JSON) documents separated by "---"
// lines. Empty documents (only comments or whitespace) are skipped, and a
// "kind: List" document is expanded into its items. The first document that
// fails to decode stops the split with an error naming its position.
func SplitYAML(data []byte) ([]Document, error) {
	var docs []Document
	var cur bytes.Buffer
	start, line, index := 1, 0, 0
	flush := func() error {
		raw := cur.Bytes()
		cur.Reset()
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			return nil
		}
		index++
		js, err := yaml.YAMLToJSON(raw)
		if err != nil {
			return fmt.Errorf("document %d (line %d): invalid YAML: %w", index, start, err)
		}
		var obj map[string]any
		if err := json.Unmarshal(js, &obj); err != nil || obj == nil {
			return fmt.Errorf("document %d (line %d): expected an object with apiVersion, kind and metadata", index, start)
		}
		if obj["kind"] == "List" {
			items, _ := obj["items"].([]any)
			for _, it := range items {
				m, ok := it.(map[string]any)
				if !ok {
					return fmt.Errorf("document %d (line %d): List items must be objects", index, start)
				}
				docs = append(docs, Document{Index: index, Line: start, Object: m})
			}
			return nil
		}
		docs = append(docs, Document{Index: index, Line: start, Object: obj})
		return nil
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line++
		text := sc.Text()
		if isSeparator(text) {
			if err := flush(); err != nil {
				return docs, err
			}
			start = line + 1
			continue
		}
		if cur.Len() == 0 && strings.TrimSpace(text) == "" {
			start = line + 1
			continue
		}
		cur.WriteString(text)
		cur.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return docs, fmt.Errorf("reading input: %w", err)
	}
	return docs, flush()
}

func isSeparator(line string) bool {
	if !strings.HasPrefix(line, "---") {
		return false
	}
	rest := strings.TrimSpace(line[3:])
	return rest == "" || strings.HasPrefix(rest, "#")
}

func stripComments(b []byte) []byte {
	var out bytes.Buffer
	for _, l := range bytes.Split(b, []byte("\n")) {
		t := bytes.TrimSpace(l)
		if len(t) > 0 && t[0] != '#' {
			out.Write(l)
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}
