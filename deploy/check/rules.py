#!/usr/bin/env python3
"""The deployment's own rules, checked on what kustomize renders (run by .ci/deploy.sh).

    rules.py [options] OVERLAY_DIR=RENDERED.yaml ...
    rules.py --self-test

Each OVERLAY_DIR=RENDERED pair is an overlay's folder and the output of `kubectl kustomize` on
it. Every violation is listed (rule, object, what is wrong) and any makes the exit status 1:

  non-root              every container runs as a non-root uid (runAsNonRoot, runAsUser != 0)
  read-only-root        readOnlyRootFilesystem on every container
  drop-all              capabilities drop ALL, add none
  no-privilege-escalation  allowPrivilegeEscalation false, not privileged, no host namespaces
  seccomp               seccompProfile RuntimeDefault (or Localhost), pod or container
  resources             cpu and memory requests and limits on every container
  probes                liveness and readiness on every long-running container
  image-tag             every image has a tag (or digest), never `latest`
  service-account-token automountServiceAccountToken false (no pod here calls the API)
  netpol-default-deny   the namespace has a deny-all NetworkPolicy (ingress and egress)
  netpol-selected       every workload's pods are selected by an allow policy of their own
                        (one that selects no other workload's pods)
  pdb                   a PodDisruptionBudget for every Deployment/StatefulSet that runs more
                        than one pod (replicas, or the autoscaler's minimum), and none that
                        forbids every eviction
  six-services          a Deployment serving each of the six services, and an autoscaler each
  config-documented     every BOOKSTORE_* variable (ConfigMaps, env, deploy/env/*.env) is a key
                        of README.md's configuration table (X_FILE: key x read from a file)
  secret-files          every /run/secrets/<key> a container's variables name is mounted in it,
                        and every key of bookstore-secrets is one deploy/env/secrets.example.env
                        documents
  compose               deploy/compose.yaml runs the same six services, each with the same
                        secrets as its Kubernetes workload
  argocd                the Argo CD Application syncs an overlay checked here, into its namespace

--self-test runs the rules on a deliberately bad Deployment and fails unless each rule fires
(and on a good one, where none may), so a broken rule cannot pass silently.
"""
import argparse
import json
import os
import re
import sys

import yaml

SIX = ("gateway", "books", "users", "orders", "fulfillment", "recommendations")
LONG_RUNNING = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet")
WORKLOADS = LONG_RUNNING + ("Job", "CronJob", "Pod")
# Pods that need the Kubernetes API (and so a service account token). None do.
TOKEN_ALLOWED = set()
SECRET = "bookstore-secrets"


class Findings:
    def __init__(self):
        self.items = []

    def add(self, rule, where, message):
        self.items.append((rule, where, message))

    def rules(self):
        return {rule for rule, _, _ in self.items}

    def report(self, out=sys.stdout):
        for rule, where, message in sorted(self.items):
            print(f"  [{rule}] {where}: {message}", file=out)


def ref(obj):
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{meta.get('name')}" + (f" ({ns})" if ns else "")


def pod_spec(obj):
    """The pod spec and pod labels of a workload, or (None, None)."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec, (obj.get("metadata") or {}).get("labels") or {}
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    if kind in WORKLOADS:
        template = spec.get("template") or {}
        return template.get("spec") or {}, (template.get("metadata") or {}).get("labels") or {}
    return None, None


def containers(spec):
    for c in spec.get("initContainers") or []:
        yield c, True
    for c in spec.get("containers") or []:
        yield c, False


def selector_matches(selector, labels):
    """A Kubernetes label selector (matchLabels, matchExpressions) against a label set."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def empty_selector(selector):
    return not (selector or {}).get("matchLabels") and not (selector or {}).get("matchExpressions")


def image_problem(image):
    if not image:
        return "no image"
    if "@" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image} has no tag (means latest)"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {image} is tagged latest"
    return None


# --- pod security, resources, probes, images ----------------------------------------------------

def check_pods(objs, f):
    for obj in objs:
        spec, _ = pod_spec(obj)
        if spec is None:
            continue
        where = ref(obj)
        psc = spec.get("securityContext") or {}
        name = (obj.get("metadata") or {}).get("name")
        if spec.get("automountServiceAccountToken") is not False and name not in TOKEN_ALLOWED:
            f.add("service-account-token", where, "automountServiceAccountToken is not false")
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(host):
                f.add("no-privilege-escalation", where, f"{host} is set")
        for c, init in containers(spec):
            cw = f"{where} {'initContainer' if init else 'container'} {c.get('name')}"
            csc = c.get("securityContext") or {}
            non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
            uid = csc.get("runAsUser", psc.get("runAsUser"))
            if non_root is not True:
                f.add("non-root", cw, "runAsNonRoot is not true")
            if uid is None:
                f.add("non-root", cw, "no runAsUser (the image decides the uid)")
            elif uid == 0:
                f.add("non-root", cw, "runAsUser is 0")
            if csc.get("readOnlyRootFilesystem") is not True:
                f.add("read-only-root", cw, "readOnlyRootFilesystem is not true")
            caps = csc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                f.add("drop-all", cw, "capabilities do not drop ALL")
            if caps.get("add"):
                f.add("drop-all", cw, f"capabilities add {caps['add']}")
            if csc.get("allowPrivilegeEscalation") is not False:
                f.add("no-privilege-escalation", cw, "allowPrivilegeEscalation is not false")
            if csc.get("privileged"):
                f.add("no-privilege-escalation", cw, "privileged")
            seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                f.add("seccomp", cw, f"seccompProfile is {seccomp or 'unset'}, not RuntimeDefault")
            resources = c.get("resources") or {}
            for part in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if not (resources.get(part) or {}).get(res):
                        f.add("resources", cw, f"no {res} {part[:-1]}")
            if obj.get("kind") in LONG_RUNNING and not init:
                for probe in ("livenessProbe", "readinessProbe"):
                    if not c.get(probe):
                        f.add("probes", cw, f"no {probe}")
            problem = image_problem(c.get("image"))
            if problem:
                f.add("image-tag", cw, problem)


# --- network policies ---------------------------------------------------------------------------

def check_network(objs, f, label):
    policies = [o for o in objs if o.get("kind") == "NetworkPolicy"]
    namespaces = {(o.get("metadata") or {}).get("namespace") for o in objs if pod_spec(o)[0] is not None}
    for ns in sorted(namespaces, key=str):
        deny = [
            p for p in policies
            if (p.get("metadata") or {}).get("namespace") == ns
            and empty_selector((p.get("spec") or {}).get("podSelector"))
            and {"Ingress", "Egress"} <= set((p.get("spec") or {}).get("policyTypes") or [])
            and not (p.get("spec") or {}).get("ingress")
            and not (p.get("spec") or {}).get("egress")
        ]
        if not deny:
            f.add("netpol-default-deny", f"{label} namespace {ns}",
                  "no NetworkPolicy denying all ingress and egress (podSelector {}, no rules)")
    # A policy of its own: one that allows something and selects this workload's pods and no
    # other workload's (shared policies, DNS or scraping, would hide a missing one).
    workloads = [(o, pod_spec(o)[1]) for o in objs if pod_spec(o)[0] is not None]
    for obj, labels in workloads:
        ns = (obj.get("metadata") or {}).get("namespace")
        others = [l for o, l in workloads if o is not obj and (o.get("metadata") or {}).get("namespace") == ns]
        own = [
            p for p in policies
            if (p.get("metadata") or {}).get("namespace") == ns
            and not empty_selector((p.get("spec") or {}).get("podSelector"))
            and selector_matches((p.get("spec") or {}).get("podSelector"), labels)
            and not any(selector_matches((p.get("spec") or {}).get("podSelector"), l) for l in others)
            and ((p.get("spec") or {}).get("ingress") or (p.get("spec") or {}).get("egress"))
        ]
        if not own:
            f.add("netpol-selected", ref(obj), "no allow NetworkPolicy of its own selects its pods")


# --- disruption budgets and autoscalers --------------------------------------------------------

def hpa_for(objs, obj):
    ns = (obj.get("metadata") or {}).get("namespace")
    for h in objs:
        if h.get("kind") != "HorizontalPodAutoscaler" or (h.get("metadata") or {}).get("namespace") != ns:
            continue
        target = (h.get("spec") or {}).get("scaleTargetRef") or {}
        if target.get("kind") == obj.get("kind") and target.get("name") == obj["metadata"]["name"]:
            return h
    return None


def served(obj):
    """The services a workload's first container serves (`serve a b`), else []."""
    spec, _ = pod_spec(obj)
    if not spec or not spec.get("containers"):
        return []
    words = list(spec["containers"][0].get("command") or []) + list(spec["containers"][0].get("args") or [])
    return served_by(words)


def served_by(words):
    if "serve" not in words:
        return []
    out = []
    for w in words[words.index("serve") + 1:]:
        if w.startswith("-"):
            break
        out.append(w)
    return out


def check_scaling(objs, f, label):
    for obj in objs:
        if obj.get("kind") not in ("Deployment", "StatefulSet"):
            continue
        spec, labels = pod_spec(obj)
        hpa = hpa_for(objs, obj)
        replicas = (obj.get("spec") or {}).get("replicas")
        pods = replicas if replicas is not None else 1
        if hpa is not None:
            pods = max(pods if replicas is not None else 0, (hpa.get("spec") or {}).get("minReplicas") or 1)
        if pods <= 1:
            continue
        ns = obj["metadata"].get("namespace")
        pdbs = [
            p for p in objs
            if p.get("kind") == "PodDisruptionBudget" and (p.get("metadata") or {}).get("namespace") == ns
            and selector_matches((p.get("spec") or {}).get("selector"), labels)
        ]
        if not pdbs:
            f.add("pdb", ref(obj), f"runs {pods} pods but no PodDisruptionBudget selects them")
        for p in pdbs:
            min_available = (p.get("spec") or {}).get("minAvailable")
            max_unavailable = (p.get("spec") or {}).get("maxUnavailable")
            if (isinstance(min_available, int) and min_available >= pods) or max_unavailable in (0, "0%"):
                f.add("pdb", ref(p), f"allows no eviction of {ref(obj)}'s {pods} pods")
    deployments = {}
    for obj in objs:
        if obj.get("kind") == "Deployment":
            for svc in served(obj):
                deployments[svc] = obj
    for svc in SIX:
        if svc not in deployments:
            f.add("six-services", f"{label}", f"no Deployment runs `serve {svc}`")
        elif hpa_for(objs, deployments[svc]) is None:
            f.add("six-services", ref(deployments[svc]), "no HorizontalPodAutoscaler scales it")
    for svc in sorted(set(deployments) - set(SIX)):
        f.add("six-services", ref(deployments[svc]), f"serves {svc}, not one of {', '.join(SIX)}")


# --- configuration keys and secrets ------------------------------------------------------------

def split_row(line):
    """The cells of a Markdown table row; a | inside `code` does not split."""
    cells, cell, code = [], [], False
    for ch in line.strip().strip("|"):
        if ch == "`":
            code = not code
        if ch == "|" and not code:
            cells.append("".join(cell))
            cell = []
        else:
            cell.append(ch)
    cells.append("".join(cell))
    return [c.strip() for c in cells]


def documented_keys(readme):
    """The flat names in the second column of the table under '### Configuration'."""
    lines = readme.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "### Configuration")
    except StopIteration:
        return set()
    keys, fence = set(), False
    for line in lines[start + 1:]:
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if fence:
            continue
        if line.startswith("#"):
            break
        if line.lstrip().startswith("|"):
            cells = split_row(line)
            if len(cells) >= 2:
                keys |= set(re.findall(r"`([a-z][a-z0-9_]*)`", cells[1]))
    return keys


def undocumented(variable, keys):
    """None if BOOKSTORE_<KEY> (or BOOKSTORE_<KEY>_FILE) is a documented key, else why not."""
    if not variable.startswith("BOOKSTORE_"):
        return None
    key = variable[len("BOOKSTORE_"):].lower()
    if key in keys or (key.endswith("_file") and key[: -len("_file")] in keys):
        return None
    return f"{variable}: `{key}` is not a key of README.md's configuration table"


def read_env_file(path):
    out = {}
    with open(path) as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, value = line.partition("=")
            out[name.strip()] = (value.strip(), n)
    return out


def config_maps(objs):
    return {
        ((o.get("metadata") or {}).get("namespace"), o["metadata"]["name"]): o.get("data") or {}
        for o in objs if o.get("kind") == "ConfigMap"
    }


def container_env(c, ns, cms, f, where):
    """The variables a container gets: envFrom ConfigMaps, then env (values or references)."""
    env = {}
    for source in c.get("envFrom") or []:
        cm = (source.get("configMapRef") or {}).get("name")
        if cm is None:
            continue
        if (ns, cm) not in cms:
            if not (source.get("configMapRef") or {}).get("optional"):
                f.add("secret-files", where, f"envFrom names ConfigMap {cm}, which is not rendered")
            continue
        env.update(cms[(ns, cm)])
    for e in c.get("env") or []:
        env[e["name"]] = e.get("value")
    return env


def check_config(objs, f, keys, secret_keys):
    cms = config_maps(objs)
    for (ns, name), data in cms.items():
        for variable in data:
            problem = undocumented(variable, keys)
            if problem:
                f.add("config-documented", f"ConfigMap/{name}", problem)
    for obj in objs:
        spec, _ = pod_spec(obj)
        if spec is None:
            continue
        ns = obj["metadata"].get("namespace")
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        for c, init in containers(spec):
            where = f"{ref(obj)} {'initContainer' if init else 'container'} {c.get('name')}"
            for e in c.get("env") or []:
                problem = undocumented(e["name"], keys)
                if problem:
                    f.add("config-documented", where, problem)
            env = container_env(c, ns, cms, f, where)
            for variable, value in sorted(env.items()):
                if not (variable.startswith("BOOKSTORE_") and variable.endswith("_FILE")):
                    continue
                if not isinstance(value, str) or not value.startswith("/run/secrets/"):
                    continue
                problem = mounted(value, c, volumes)
                if problem:
                    f.add("secret-files", where, f"{variable}={value}: {problem}")
        for v in spec.get("volumes") or []:
            secret = v.get("secret") or {}
            if secret.get("secretName") != SECRET:
                continue
            if not secret.get("items"):
                f.add("secret-files", ref(obj), f"volume {v.get('name')} mounts all of {SECRET}; list the keys it needs (items)")
            for item in secret.get("items") or []:
                if item.get("key") not in secret_keys:
                    f.add("secret-files", ref(obj),
                          f"{SECRET} key {item.get('key')} is not in deploy/env/secrets.example.env")


def mounted(path, c, volumes):
    """None if a volume mounted in the container provides the file at path, else why not."""
    best = None
    for m in c.get("volumeMounts") or []:
        mount = m.get("mountPath", "").rstrip("/")
        if path.startswith(mount + "/") and (best is None or len(mount) > len(best[0])):
            best = (mount, m)
    if best is None:
        return "nothing is mounted there"
    mount, m = best
    rel = path[len(mount) + 1:]
    volume = volumes.get(m.get("name"))
    if volume is None:
        return f"volume {m.get('name')} is not defined"
    source = volume.get("secret") or volume.get("configMap")
    if source is None:
        return f"volume {m.get('name')} is not a Secret or ConfigMap"
    items = source.get("items")
    if items is not None and rel not in {i.get("path") for i in items}:
        name = source.get("secretName") or source.get("name")
        return f"{name} is mounted at {mount} without the key {rel}"
    return None


def check_env_files(env_dir, f, keys):
    for name in sorted(os.listdir(env_dir)):
        if not name.endswith(".env") or name == "secrets.example.env":
            continue
        for variable, (_, n) in read_env_file(os.path.join(env_dir, name)).items():
            problem = undocumented(variable, keys)
            if problem:
                f.add("config-documented", f"{os.path.join(env_dir, name)}:{n}", problem)


# --- compose and Argo CD ------------------------------------------------------------------------

def check_compose(compose, objs, f, where):
    """compose: the output of `docker-compose config --format json`, or None if there is none."""
    if compose is None:
        f.add("compose", where, "not checked: missing, or not valid (`docker-compose config` failed)")
        return
    services = compose.get("services") or {}
    in_compose = {}
    for name, service in services.items():
        words = list(service.get("entrypoint") or []) + list(service.get("command") or [])
        for svc in served_by(words):
            in_compose[svc] = (name, service)
    in_k8s = {}
    for obj in objs:
        if obj.get("kind") == "Deployment":
            for svc in served(obj):
                in_k8s[svc] = obj
    for svc in sorted(set(SIX) | set(in_k8s)):
        if svc not in in_compose:
            f.add("compose", where, f"no service runs `serve {svc}` (the Deployments do)")
    for svc in sorted(set(in_compose) - set(in_k8s)):
        f.add("compose", where, f"service {in_compose[svc][0]} serves {svc}, which no Deployment does")
    for svc in sorted(set(in_compose) & set(in_k8s)):
        name, service = in_compose[svc]
        theirs = {s.get("source") if isinstance(s, dict) else s for s in service.get("secrets") or []}
        spec, _ = pod_spec(in_k8s[svc])
        ours = {
            i.get("key")
            for v in spec.get("volumes") or [] if (v.get("secret") or {}).get("secretName") == SECRET
            for i in (v.get("secret") or {}).get("items") or []
        }
        if theirs != ours:
            f.add("compose", f"{where} service {name}",
                  f"secrets {sorted(theirs)} differ from {ref(in_k8s[svc])}'s {sorted(ours)}")


def check_argocd(app, overlays, f, where):
    if app is None:
        f.add("argocd", where, "not found")
        return
    if app.get("apiVersion") != "argoproj.io/v1alpha1" or app.get("kind") != "Application":
        f.add("argocd", where, "not an argoproj.io/v1alpha1 Application")
        return
    spec = app.get("spec") or {}
    path = (spec.get("source") or {}).get("path", "")
    if path.rstrip("/") not in overlays:
        f.add("argocd", where, f"source.path {path!r} is none of the checked overlays {sorted(overlays)}")
    else:
        namespaces = [o["metadata"]["name"] for o in overlays[path.rstrip("/")] if o.get("kind") == "Namespace"]
        dest = (spec.get("destination") or {}).get("namespace")
        if dest not in namespaces:
            f.add("argocd", where, f"destination namespace {dest!r} is not the overlay's {namespaces}")
    sync = spec.get("syncPolicy") or {}
    automated = sync.get("automated") or {}
    if not (automated.get("prune") and automated.get("selfHeal")):
        f.add("argocd", where, "automated sync without prune and selfHeal")
    if "CreateNamespace=true" not in (sync.get("syncOptions") or []):
        f.add("argocd", where, "no CreateNamespace=true")


# --- running ------------------------------------------------------------------------------------

def check_rendered(label, objs, f, keys, secret_keys):
    check_pods(objs, f)
    check_network(objs, f, label)
    check_scaling(objs, f, label)
    check_config(objs, f, keys, secret_keys)


def load_yaml_docs(path):
    with open(path) as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--self-test", action="store_true")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--env-dir", default="deploy/env")
    parser.add_argument("--compose-json", help="`docker-compose config --format json` of deploy/compose.yaml")
    parser.add_argument("--compose-name", default="deploy/compose.yaml")
    parser.add_argument("--argocd", default="deploy/k8s/argocd/application.yaml")
    parser.add_argument("rendered", nargs="*", metavar="OVERLAY_DIR=RENDERED.yaml")
    args = parser.parse_args(argv)
    if args.self_test:
        return self_test()
    if not args.rendered:
        parser.error("no rendered overlays given")

    f = Findings()
    with open(args.readme) as fh:
        keys = documented_keys(fh.read())
    if not keys:
        f.add("config-documented", args.readme, "no configuration table under '### Configuration'")
    secret_keys = set(read_env_file(os.path.join(args.env_dir, "secrets.example.env")))
    check_env_files(args.env_dir, f, keys)

    overlays, counts = {}, []
    for pair in args.rendered:
        overlay, _, path = pair.partition("=")
        objs = load_yaml_docs(path)
        overlays[overlay.rstrip("/")] = objs
        check_rendered(overlay, objs, f, keys, secret_keys)
        workloads = [o for o in objs if pod_spec(o)[0] is not None]
        n_containers = sum(len(list(containers(pod_spec(o)[0]))) for o in workloads)
        n_policies = sum(o.get("kind") == "NetworkPolicy" for o in objs)
        counts.append(f"{overlay}: {len(objs)} objects, {len(workloads)} workloads, "
                      f"{n_containers} containers, {n_policies} network policies")

    compose = None
    if args.compose_json and os.path.exists(args.compose_json) and os.path.getsize(args.compose_json):
        with open(args.compose_json) as fh:
            compose = json.load(fh)
    # The services are the same in every overlay; compare with the first.
    check_compose(compose, overlays[next(iter(overlays))], f, args.compose_name)

    app = None
    if os.path.exists(args.argocd):
        docs = load_yaml_docs(args.argocd)
        app = docs[0] if docs else None
    check_argocd(app, overlays, f, args.argocd)

    for line in counts:
        print(f"rules: {line}")
    print(f"rules: {len(keys)} documented configuration keys, {len(secret_keys)} secret keys")
    if f.items:
        print(f"rules: {len(f.items)} violation(s):")
        f.report()
        return 1
    print("rules: no violations")
    return 0


# --- self-test ----------------------------------------------------------------------------------

SELF_TEST_README = """
### Configuration

| file key | flat name | default | meaning |
|---|---|---|---|
| `data_dir` | `data_dir` | `./data` | x |
| `books.database_url` | `books_database_url` | none | x |

## Next
"""


def bad_deployment():
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "books", "namespace": "t"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "books"}},
            "template": {
                "metadata": {"labels": {"app": "books"}},
                "spec": {
                    "securityContext": {"runAsUser": 0},
                    "containers": [{
                        "name": "bookstore",
                        "image": "ghcr.io/bookstore/bookstore:latest",
                        "args": ["serve", "books"],
                        "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
                        "env": [
                            {"name": "BOOKSTORE_NOT_A_KEY", "value": "1"},
                            {"name": "BOOKSTORE_BOOKS_DATABASE_URL_FILE", "value": "/run/secrets/books-database-url"},
                        ],
                    }],
                    "volumes": [{"name": "s", "secret": {"secretName": SECRET}}],
                },
            },
        },
    }


def good_deployment():
    d = bad_deployment()
    pod = d["spec"]["template"]["spec"]
    pod["automountServiceAccountToken"] = False
    pod["securityContext"] = {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
    pod["volumes"] = [{"name": "s", "secret": {"secretName": SECRET, "items": [
        {"key": "books-database-url", "path": "books-database-url"}]}}]
    c = pod["containers"][0]
    c["image"] = "ghcr.io/bookstore/bookstore:0.1.0"
    c["securityContext"] = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}}
    c["resources"] = {"requests": {"cpu": "1", "memory": "1Mi"}, "limits": {"cpu": "1", "memory": "1Mi"}}
    c["livenessProbe"] = c["readinessProbe"] = {"httpGet": {"path": "/healthz", "port": 9180}}
    c["env"] = [c["env"][1]]
    c["volumeMounts"] = [{"name": "s", "mountPath": "/run/secrets"}]
    return d


def self_test():
    keys = documented_keys(SELF_TEST_README)
    assert keys == {"data_dir", "books_database_url"}, keys
    secret_keys = {"books-database-url"}
    expected = {
        "non-root", "read-only-root", "drop-all", "no-privilege-escalation", "seccomp", "resources",
        "probes", "image-tag", "service-account-token", "netpol-default-deny", "netpol-selected",
        "pdb", "six-services", "config-documented", "secret-files", "compose", "argocd",
    }
    f = Findings()
    bad = bad_deployment()
    check_rendered("self-test", [bad], f, keys, secret_keys)
    check_compose({"services": {"web": {"command": ["serve", "gateway"]}}}, [bad], f, "compose")
    check_argocd({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
                  "spec": {"source": {"path": "elsewhere"}}}, {"overlay": [bad]}, f, "argocd")
    missing = expected - f.rules()
    # An untagged image is as bad as :latest.
    untagged = Findings()
    bad["spec"]["template"]["spec"]["containers"][0]["image"] = "bookstore"
    check_pods([bad], untagged)
    if "image-tag" not in untagged.rules():
        missing.add("image-tag (untagged)")

    # The same Deployment done right raises none of the rules about a pod, and a namespace with
    # a deny-all policy, an allow policy, a budget and an autoscaler satisfies the rest.
    good = good_deployment()
    policies = [
        {"kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": "t"},
         "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}},
        {"kind": "NetworkPolicy", "metadata": {"name": "books", "namespace": "t"},
         "spec": {"podSelector": {"matchLabels": {"app": "books"}}, "policyTypes": ["Ingress"],
                  "ingress": [{"ports": [{"port": 50051}]}]}},
        {"kind": "PodDisruptionBudget", "metadata": {"name": "books", "namespace": "t"},
         "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "books"}}}},
        {"kind": "HorizontalPodAutoscaler", "metadata": {"name": "books", "namespace": "t"},
         "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "books"}, "minReplicas": 2}},
    ]
    g = Findings()
    check_rendered("self-test", [good] + policies, g, keys, secret_keys)
    unexpected = g.rules() - {"six-services"}
    if {w for r, w, m in g.items if r == "six-services"} != {"self-test"} or unexpected:
        print("rules self-test: the good Deployment raised:")
        g.report()
        return 1
    if missing:
        print(f"rules self-test: these rules did not fire on the bad Deployment: {sorted(missing)}")
        f.report()
        return 1
    print(f"rules self-test: all {len(expected)} rules fired on a bad Deployment "
          f"({len(f.items)} violations), none on a good one")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
