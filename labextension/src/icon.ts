import { LabIcon } from '@jupyterlab/ui-components';

/** A small robot head: the agents panel and toolbar icon. */
const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M11 2h2v3h-2z"/>
    <path fill-rule="evenodd" d="M6 6h12a3 3 0 0 1 3 3v8a3 3 0 0 1-3 3H6a3 3 0 0 1-3-3V9a3 3 0 0 1 3-3zm3 4.5a1.5 1.5 0 1 0 0 3a1.5 1.5 0 0 0 0-3zm6 0a1.5 1.5 0 1 0 0 3a1.5 1.5 0 0 0 0-3zM8 16v1.5h8V16z"/>
  </g>
</svg>`;

export const agentIcon = new LabIcon({ name: 'jupyter-agent:agent', svgstr: svg });
