/**
 * Which cells are agent cells, and which agent each one is.
 *
 * The kernel names an agent by `--name NAME` (or `-n NAME`) on the `%%agent`
 * line, and otherwise by a name it makes from the cell's nbformat id. That name
 * is the kernel's rule alone (in Python): the server lists each agent with the id
 * of its cell, and an unnamed agent is found by that id, never by a name made here.
 */

const AGENT_LINE = /^%%agent(\s|$)/;
const LOAD_EXT = /^\s*%(re)?load_ext\s+jupyter_agent\s*$/m;

/** Split a magic's argument line like a shell does (quotes, no escapes needed here). */
export function splitArgs(line: string): string[] {
  const args: string[] = [];
  const pattern = /"([^"]*)"|'([^']*)'|(\S+)/g;
  let match: RegExpExecArray | null;
  while ((match = pattern.exec(line)) !== null) {
    args.push(match[1] ?? match[2] ?? match[3]);
  }
  return args;
}

/** The `--name` of an `%%agent` cell, `null` if unnamed, `undefined` if not an agent cell. */
export function parseAgentName(source: string): string | null | undefined {
  const first = source
    .replace(/^\s*\n/, '')
    .split('\n', 1)[0]
    .trim();
  if (!AGENT_LINE.test(first)) {
    return undefined;
  }
  const args = splitArgs(first.slice('%%agent'.length));
  let name: string | null = null;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if ((arg === '--name' || arg === '-n') && i + 1 < args.length) {
      name = args[++i];
    } else if (arg.startsWith('--name=')) {
      name = arg.slice('--name='.length);
    } else if (arg.startsWith('-n') && !arg.startsWith('--') && arg.length > 2) {
      name = arg.slice(2).replace(/^=/, '');
    }
  }
  return name;
}

/** Whether a cell loads the extension (`%load_ext jupyter_agent`). */
export function loadsExtension(source: string): boolean {
  return LOAD_EXT.test(source);
}
