package push

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/weftmesh/weft/internal/pilot/model"
	"github.com/weftmesh/weft/internal/resource"
	"github.com/weftmesh/weft/internal/store"
	"google.golang.org/protobuf/types/known/structpb"
)

// ConfigStore is what the config source reads.
type ConfigStore interface {
	store.Reader
	store.Watcher
}

// ConfigSink receives config changes (the Pusher).
type ConfigSink interface {
	UpsertConfig(c *model.Config)
	DeleteConfig(key string)
	ReplaceConfigs(kinds []string, configs []*model.Config)
}

// DecodeConfig turns a stored object into a model.Config.
func DecodeConfig(k *resource.Kind, kv store.KV) (*model.Config, error) {
	if k.Kind == model.SecretKind {
		return decodeSecret(kv)
	}
	var obj struct {
		Metadata struct {
			Name              string            `json:"name"`
			Namespace         string            `json:"namespace"`
			Labels            map[string]string `json:"labels"`
			Annotations       map[string]string `json:"annotations"`
			CreationTimestamp string            `json:"creationTimestamp"`
		} `json:"metadata"`
		Spec json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal(kv.Value, &obj); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", kv.Key, err)
	}
	spec := k.NewSpec()
	if len(obj.Spec) > 0 {
		if err := resource.UnmarshalSpec(obj.Spec, spec, true); err != nil {
			return nil, fmt.Errorf("decoding spec of %s: %w", kv.Key, err)
		}
	}
	created, _ := time.Parse(time.RFC3339, obj.Metadata.CreationTimestamp)
	return &model.Config{
		Kind: k.Kind, Name: obj.Metadata.Name, Namespace: obj.Metadata.Namespace,
		Labels: obj.Metadata.Labels, Annotations: obj.Metadata.Annotations,
		CreationTime: created, ResourceVersion: strconv.FormatInt(kv.ModRevision, 10), Spec: spec,
	}, nil
}

// decodeSecret reads a stored Secret as a gateway credential: the PEM
// values of its certificate, key and CA entries (model.CredentialKeys),
// nothing else of it.
func decodeSecret(kv store.KV) (*model.Config, error) {
	var obj struct {
		Metadata struct {
			Name              string `json:"name"`
			Namespace         string `json:"namespace"`
			CreationTimestamp string `json:"creationTimestamp"`
		} `json:"metadata"`
		Type string            `json:"type"`
		Data map[string][]byte `json:"data"` // base64 in JSON
	}
	if err := json.Unmarshal(kv.Value, &obj); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", kv.Key, err)
	}
	fields := map[string]*structpb.Value{}
	for _, key := range model.CredentialKeys {
		if v, ok := obj.Data[key]; ok {
			fields[key] = structpb.NewStringValue(string(v))
		}
	}
	created, _ := time.Parse(time.RFC3339, obj.Metadata.CreationTimestamp)
	return &model.Config{
		Kind: model.SecretKind, Name: obj.Metadata.Name, Namespace: obj.Metadata.Namespace,
		CreationTime: created, ResourceVersion: strconv.FormatInt(kv.ModRevision, 10), Spec: &structpb.Struct{Fields: fields},
	}, nil
}

// istioKinds are the kinds pilot consumes: Istio's, and Secrets (the
// certificates of gateways' credentialName).
func istioKinds() []*resource.Kind {
	var out []*resource.Kind
	for _, k := range resource.All() {
		if k.NewSpec != nil || k.Kind == model.SecretKind {
			out = append(out, k)
		}
	}
	return out
}

// WatchConfig feeds every Istio config object in st to sink: a full list,
// then watch events; a broken or compacted watch is healed by a relist.
// synced (may be nil) is called once every kind has been listed. It
// returns when ctx ends.
func WatchConfig(ctx context.Context, st ConfigStore, sink ConfigSink, synced func(), log *slog.Logger) {
	kinds := istioKinds()
	var wg sync.WaitGroup
	wg.Add(len(kinds))
	for _, k := range kinds {
		go watchKind(ctx, st, sink, k, wg.Done, log.With("kind", k.Kind))
	}
	go func() {
		wg.Wait()
		if synced != nil && ctx.Err() == nil {
			synced()
		}
	}()
	<-ctx.Done()
}

func watchKind(ctx context.Context, st ConfigStore, sink ConfigSink, k *resource.Kind, listed func(), log *slog.Logger) {
	backoff := 100 * time.Millisecond
	var once sync.Once
	for ctx.Err() == nil {
		rev, err := relist(ctx, st, sink, k, log)
		if err == nil {
			once.Do(listed)
			err = follow(ctx, st, sink, k, rev, log)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			log.Warn("config watch interrupted; relisting", "error", err, "backoff", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
	}
}

func relist(ctx context.Context, st ConfigStore, sink ConfigSink, k *resource.Kind, log *slog.Logger) (int64, error) {
	kvs, rev, err := st.List(ctx, k.KeyPrefix(""))
	if err != nil {
		return 0, err
	}
	configs := make([]*model.Config, 0, len(kvs))
	for _, kv := range kvs {
		c, err := DecodeConfig(k, kv)
		if err != nil {
			log.Warn("skipping undecodable config", "key", kv.Key, "error", err)
			continue
		}
		configs = append(configs, c)
	}
	sink.ReplaceConfigs([]string{k.Kind}, configs)
	return rev, nil
}

// follow applies watch events until the watch ends; nil means "closed,
// relist", an error means it failed.
func follow(ctx context.Context, st ConfigStore, sink ConfigSink, k *resource.Kind, rev int64, log *slog.Logger) error {
	events, err := st.Watch(ctx, k.KeyPrefix(""), rev)
	if err != nil {
		return err
	}
	for ev := range events {
		switch ev.Type {
		case store.EventPut:
			c, err := DecodeConfig(k, ev.KV)
			if err != nil {
				log.Warn("skipping undecodable config", "key", ev.KV.Key, "error", err)
				continue
			}
			sink.UpsertConfig(c)
		case store.EventDelete:
			rest := strings.TrimPrefix(ev.KV.Key, k.KeyPrefix(""))
			ns, name, _ := strings.Cut(rest, "/")
			sink.DeleteConfig(k.Kind + "/" + ns + "/" + name)
		case store.EventError:
			if errors.Is(ev.Err, store.ErrCompacted) {
				return nil
			}
			return ev.Err
		}
	}
	return nil
}
