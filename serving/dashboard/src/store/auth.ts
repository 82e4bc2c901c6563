/** The API key the user signed in with (sessionStorage: gone when the tab closes) and what
 * /api/info said about it. Every fetch and the WebSocket read the key from here. */
import { create } from "zustand";

const KEY = "impetus.apiKey";

function readKey(): string | null {
  try {
    return sessionStorage.getItem(KEY);
  } catch {
    return null;
  }
}

export interface AuthState {
  apiKey: string | null;
  /** Set when the server answered 401: the sign-in form shows instead of the pages. */
  rejected: boolean;
  signIn: (key: string) => void;
  signOut: () => void;
  markRejected: () => void;
}

export const useAuth = create<AuthState>((set) => ({
  apiKey: readKey(),
  rejected: false,
  signIn: (key) => {
    try {
      sessionStorage.setItem(KEY, key);
    } catch {
      /* private mode: keep it in memory only */
    }
    set({ apiKey: key, rejected: false });
  },
  signOut: () => {
    try {
      sessionStorage.removeItem(KEY);
    } catch {
      /* ignore */
    }
    set({ apiKey: null, rejected: false });
  },
  markRejected: () => set({ rejected: true }),
}));
