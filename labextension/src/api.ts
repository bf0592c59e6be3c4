/**
 * Client for the server extension's REST API (`/jupyter-agent/api/...`).
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IAgentCells } from './insert';

/** A run's status; the same list as `jupyter_agent.vocab.Status` (a test checks). */
export type AgentStatus =
  | 'running'
  | 'done'
  | 'interrupted'
  | 'awaiting_approval'
  | 'error'
  | 'limit'
  | 'budget'
  | 'stuck'
  | 'stalled';

/** One checkpoint of an agent's latest run, as drawn on the timeline. */
export interface ITimelineEntry {
  step: number;
  kind: string;
  status: string;
}

/** What a "what if" fork changed at its checkpoint ([run, checkpoint]). */
export interface IWhatIf {
  edited: 'reply' | 'output' | 'model';
  from: [string, number];
  /** "what if: edited reply at checkpoint 7", as every list says it. */
  text: string;
}

/** An agent of a notebook and the state of its latest run. */
export interface IAgentSummary {
  name: string;
  cell_id: string | null;
  /** The agent that delegated this one (the `delegate` tool), or null for a top-level agent. */
  parent_agent: string | null;
  named: boolean;
  /** A fork with an edited reply, tool output or model: what changed, and its tag's text. */
  what_if: IWhatIf | null;
  status: AgentStatus;
  /** The last checkpoint's sequence number. */
  step: number;
  /** Steps done: model calls in the run's history. */
  steps: number;
  /** The status as users read it: "done after 3 steps", "interrupted at step 3". */
  label: string;
  live: boolean;
  run_id: string;
  runs: number;
  model: string;
  prompt: string;
  started_at: number;
  updated_at: number;
  checkpoints: number;
  /** The ledger: tokens spent, and how many of them prompt and completion. */
  tokens: number;
  prompt_tokens: number;
  completion_tokens: number;
  /** Prompt tokens a provider's cache served, and their share of the prompt tokens. */
  cached_tokens: number;
  cache_hit_rate: number | null;
  /** Dollars spent, caching counted; null when the model has no price. */
  cost_usd: number | null;
  /** The latest plan's progress ("4/12"), if the agent keeps a plan. */
  plan: IPlanProgress | null;
  timeline: ITimelineEntry[];
}

export interface IPlanProgress {
  items: { title: string; status: string }[];
  done: number;
  total: number;
  text: string;
}

export interface IAgentList {
  notebook: string;
  agents: IAgentSummary[];
  running: boolean;
}

/** An error answered by the API, with its JSON message. */
export class APIError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

const settings = ServerConnection.makeSettings();

async function request<T>(path: string, init: RequestInit = {}): Promise<T> {
  const url = URLExt.join(settings.baseUrl, 'jupyter-agent', 'api', path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }
  const text = await response.text();
  let data: any = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { message: text };
  }
  if (!response.ok) {
    throw new APIError(response.status, data.message || response.statusText);
  }
  return data as T;
}

/** The agents of a notebook, by its path relative to the server root. */
export function listAgents(notebook: string): Promise<IAgentList> {
  return request<IAgentList>(`agents?${URLExt.objectToQueryString({ notebook }).slice(1)}`);
}

/** An agent's python calls as code cells with their outputs (its latest run). */
export function agentCells(notebook: string, name: string): Promise<IAgentCells> {
  const query = URLExt.objectToQueryString({ notebook });
  return request<IAgentCells>(`agents/${encodeURIComponent(name)}/cells${query}`);
}

/** What the server stored for an answer to a waiting call. */
export interface IDecision {
  run_id: string;
  step: number;
  call_id: string;
  action: 'approve' | 'reject' | 'edit';
}

/**
 * Approve or reject the call an agent waits on, with no kernel running it: the
 * answer is stored and applied when the agent next runs (409: it no longer waits).
 */
export function decide(
  notebook: string,
  name: string,
  action: 'approve' | 'reject'
): Promise<IDecision> {
  const query = URLExt.objectToQueryString({ notebook }).slice(1);
  return request<IDecision>(`agents/${encodeURIComponent(name)}/decision?${query}`, {
    method: 'POST',
    body: JSON.stringify({ action })
  });
}

/** A job of the worker pool (`jupyter agent submit`) that is queued, running or failed. */
export interface IJob {
  job: string;
  notebook: string;
  /** The one agent it runs, or null for all of the notebook's agents. */
  agent: string | null;
  /** When it was submitted (ISO 8601), or null when unknown. */
  submitted: string | null;
  status: 'queued' | 'running' | 'failed';
  /** Why it failed, in one sentence. */
  error: string | null;
}

/** The worker pool's queued, running and failed jobs of a notebook. */
export function listJobs(notebook: string): Promise<{ jobs: IJob[] }> {
  return request<{ jobs: IJob[] }>(`jobs?${URLExt.objectToQueryString({ notebook }).slice(1)}`);
}
