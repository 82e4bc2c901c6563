/** The conversation and the chat settings, kept across page changes (not across reloads). */
import { create } from "zustand";
import type { Citation, ToolCall } from "../../api/types";

export interface Turn {
  id: number;
  role: "user" | "assistant";
  content: string;
  citations?: Citation[];
  toolCalls?: ToolCall[];
  finishReason?: string | null;
  error?: string;
  streaming?: boolean;
}

export interface ChatSettings {
  model: string;
  temperature: number;
  topP: number;
  maxTokens: number;
  rag: boolean;
  collection: string;
}

interface ChatState {
  turns: Turn[];
  settings: ChatSettings;
  setSettings: (patch: Partial<ChatSettings>) => void;
  add: (turn: Omit<Turn, "id">) => number;
  update: (id: number, patch: Partial<Turn> | ((t: Turn) => Partial<Turn>)) => void;
  clear: () => void;
}

let nextId = 1;

export const DEFAULT_SETTINGS: ChatSettings = { model: "", temperature: 0.7, topP: 0.9, maxTokens: 256, rag: false, collection: "" };

export const useChat = create<ChatState>((set) => ({
  turns: [],
  settings: DEFAULT_SETTINGS,
  setSettings: (patch) => set((s) => ({ settings: { ...s.settings, ...patch } })),
  add: (turn) => {
    const id = nextId++;
    set((s) => ({ turns: [...s.turns, { ...turn, id }] }));
    return id;
  },
  update: (id, patch) =>
    set((s) => ({ turns: s.turns.map((t) => (t.id === id ? { ...t, ...(typeof patch === "function" ? patch(t) : patch) } : t)) })),
  clear: () => set({ turns: [] }),
}));
